"""Report section rlgen (issue 21): "SFT+GRPO minus SFT" per cell with seed intervals, in-domain vs off-diagonal,
and the reward-hacking figure from the MLflow metric history of GRPO runs — on a small real MLflow store whose
numbers are hand-chosen."""

from __future__ import annotations

import math

import pytest

from medgr2.report.hacking_figure import band, drift, hacking_figures
from medgr2.report.rl_gain import gain_matrix, gain_tables

# (seed, SFT acc CT, SFT+GRPO CT, SFT MRI, SFT+GRPO MRI) of cross_modality_grpo runs trained on CT
RUNS = [("0", 0.80, 0.84, 0.40, 0.38), ("1", 0.78, 0.80, 0.42, 0.42)]


def build(root, option_runs=(), match_runs=()):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("medgr2", artifact_location=str(root / "mlruns"))
    arms = [("cross_modality_grpo", r) for r in [*RUNS, *option_runs]] + [("cross_modality_grpo_match", r)
                                                                          for r in match_runs]
    for i, (experiment, (seed, s_ct, g_ct, s_mri, g_mri, *sweep)) in enumerate(arms):
        tags = {"experiment": experiment, "seed": seed, "source": "CT", "source_axis": "modality",
                "data": "synthmed", "sweep": " ".join(["source=CT", *sweep])}
        top = client.create_run(exp, tags={**tags, "stage": "loop"}, run_name=f"cm seed={seed}",
                                start_time=1_700_000_000_000 + i)
        metrics = {"test/acc": (g_ct + g_mri) / 2, "sft/test/acc/modality/CT": s_ct, "test/acc/modality/CT": g_ct,
                   "sft/test/acc/modality/MRI": s_mri, "test/acc/modality/MRI": g_mri}
        client.log_batch(top.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        client.set_terminated(top.info.run_id, "FINISHED")
        grpo = client.create_run(exp, tags={**tags, "stage": "grpo", "mlflow.parentRunId": top.info.run_id})
        # R_φ term rises 0.5 -> 0.8 while rollout accuracy falls 0.9 -> 0.6 over 10 steps: reward hacking
        hist = [Metric("train/reward_rm_raw", 0.5 + 0.03 * (s + 1) + 0.01 * i, 0, s) for s in range(10)]
        hist += [Metric("train/accuracy", 0.9 - 0.03 * (s + 1), 0, s) for s in range(10)]
        client.log_batch(grpo.info.run_id, metrics=hist)
        client.set_terminated(grpo.info.run_id, "FINISHED")
    return uri


def test_gain_cells_are_paired_differences_averaged_over_seeds(tmp_path):
    from medgr2.report.mlflow_runs import load_runs

    runs = load_runs(build(tmp_path))
    cells, summary = gain_tables(runs, "modality")
    ct = cells[(cells["arm"] == "cross_modality_grpo") & (cells["test"] == "CT")].iloc[0]
    assert ct["domain"] == "in-domain" and ct["seeds"] == 2
    assert ct["gain"] == pytest.approx((0.04 + 0.02) / 2)
    assert ct["SFT"] == pytest.approx(0.79) and ct["SFT+GRPO"] == pytest.approx(0.82)
    # t interval from two seeds' gains 0.04 and 0.02: mean 0.03, se 0.01, t(1) 97.5% = 12.706
    assert (ct["gain hi"] - ct["gain lo"]) / 2 == pytest.approx(12.706 * 0.01, rel=1e-3)
    mri = cells[cells["test"] == "MRI"].iloc[0]
    assert mri["domain"] == "off-diagonal" and mri["gain"] == pytest.approx(-0.01)
    by = summary.set_index("domain")
    assert by.loc["in-domain", "gain"] == pytest.approx(0.03) and by.loc["off-diagonal", "gain"] == pytest.approx(-0.01)
    assert by.loc["in-domain", "seeds"] == 2 and by.loc["in-domain", "sources"] == 1
    assert gain_matrix(cells, "cross_modality_grpo").loc["CT", "MRI"] == pytest.approx(-0.01)
    # no cross_task runs: empty tables, not an error
    assert gain_tables(runs, "question_type")[0].empty


def test_a_recipe_option_is_its_own_arm_with_its_gain_difference_to_the_recipe(tmp_path):
    from medgr2.report.aggregate import PredictionCache
    from medgr2.report.claims import claims_table
    from medgr2.report.mlflow_runs import load_runs

    # The same SFT accuracies (same seeds), GRPO with the option: CT +0.06 / +0.05 instead of +0.04 / +0.02.
    option = "stage.grpo.difficulty_filter=true"
    runs = load_runs(build(tmp_path, [("0", 0.80, 0.86, 0.40, 0.40, option), ("1", 0.78, 0.83, 0.42, 0.42, option)]))
    cells, summary = gain_tables(runs, "modality")
    label = f"cross_modality_grpo [{option}]"
    assert set(cells["arm"]) == {"cross_modality_grpo", label}
    base = summary[summary["arm"] == "cross_modality_grpo"].set_index("domain")
    opt = summary[summary["arm"] == label].set_index("domain")
    assert base.loc["in-domain", "gain"] == pytest.approx(0.03) and math.isnan(base.loc["in-domain", "vs base"])
    assert opt.loc["in-domain", "gain"] == pytest.approx(0.055)
    # per seed: 0.06 - 0.04 and 0.05 - 0.02 -> mean 0.025, t(1) interval from the two differences
    assert opt.loc["in-domain", "vs base"] == pytest.approx(0.025)
    assert (opt.loc["in-domain", "vs base hi"] - opt.loc["in-domain", "vs base lo"]) / 2 == pytest.approx(
        12.706 * 0.005, rel=1e-3)
    assert opt.loc["off-diagonal", "vs base"] == pytest.approx((0.00 - -0.02 + 0.0 - 0.0) / 2)
    claims = claims_table(runs, PredictionCache(lambda rid: None)).set_index("claim")
    row = claims.loc[f"{option} raises GRPO's gain (in-domain)"]
    assert row["diff"] == pytest.approx(0.025) and row["seeds"] == 2
    # the reward-hacking figure keeps the option's GRPO runs apart too, under a file-safe name
    files, table = hacking_figures(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out")
    assert set(files) == {"cross_modality_grpo", label}
    assert files[label].name == "hacking_cross_modality_grpo_stage.grpo.difficulty_filter=true.png"
    assert set(table[table["arm"] == label]["runs"]) == {2}


def test_the_match_reward_arm_is_compared_with_the_papers_reward_on_the_same_seeds_and_sources(tmp_path):
    from medgr2.report.aggregate import PredictionCache
    from medgr2.report.claims import claims_table
    from medgr2.report.mlflow_runs import load_runs

    # the match reward's GRPO on CT: +0.01 / +0.05 where the paper's reward gave +0.04 / +0.02
    runs = load_runs(build(tmp_path, match_runs=[("0", 0.80, 0.81, 0.40, 0.40), ("1", 0.78, 0.83, 0.42, 0.43)]))
    _, summary = gain_tables(runs, "modality")
    match = summary[summary["arm"] == "cross_modality_grpo_match"].set_index("domain")
    assert match.loc["in-domain", "gain"] == pytest.approx(0.03)
    assert match.loc["in-domain", "vs base"] == pytest.approx(((0.01 - 0.04) + (0.05 - 0.02)) / 2)
    assert match.loc["off-diagonal", "vs base"] == pytest.approx(((0.0 - -0.02) + (0.01 - 0.0)) / 2)
    paper = summary[summary["arm"] == "cross_modality_grpo"].set_index("domain")
    assert math.isnan(paper.loc["in-domain", "vs base"])  # the paper's reward is the reference
    claims = claims_table(runs, PredictionCache(lambda rid: None)).set_index("claim")
    row = claims.loc["the match reward raises GRPO's gain over the paper's reward (off-diagonal)"]
    assert row["diff"] == pytest.approx(0.015) and row["seeds"] == 2 and row["verdict"] == "inconclusive"


def test_a_run_without_the_sft_metrics_is_skipped_with_the_reason(tmp_path):
    from mlflow.tracking import MlflowClient

    from medgr2.report.mlflow_runs import load_runs

    uri = build(tmp_path)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("medgr2").experiment_id
    run = client.create_run(exp, tags={"experiment": "cross_modality_grpo", "seed": "2", "source": "MRI",
                                       "stage": "loop"})
    client.log_metric(run.info.run_id, "test/acc/modality/MRI", 0.5)
    client.log_metric(run.info.run_id, "test/acc", 0.5)
    client.set_terminated(run.info.run_id, "FINISHED")
    cells, _ = gain_tables(load_runs(uri), "modality")
    assert set(cells["source"]) == {"CT"}
    assert any("eval_after_sft" in s["reason"] for s in cells.attrs["skipped"])


def test_hacking_figure_reads_the_grpo_metric_history_and_shows_the_drift(tmp_path):
    uri = build(tmp_path)
    files, table = hacking_figures(uri, tmp_path / "out")
    assert set(files) == {"cross_modality_grpo"} and files["cross_modality_grpo"].stat().st_size > 5000
    rows = table.set_index("series")
    assert rows.loc["R_φ term", "key"] == "train/reward_rm_raw" and rows.loc["R_φ term", "runs"] == 2
    # first / last fifth (2 of 10 steps) of each run, averaged over the two runs
    assert rows.loc["R_φ term", "change"] == pytest.approx(0.03 * 8)
    assert rows.loc["rollout accuracy", "change"] == pytest.approx(-0.03 * 8)
    assert "R_φ right-vs-wrong ranking accuracy" not in rows.index  # not logged by these runs


def test_band_averages_runs_per_step_with_a_std_band():
    import pandas as pd

    hist = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [0, 1, 0, 1], "value": [0.0, 1.0, 1.0, 1.0]})
    b = band(hist, window=1)
    assert b["mean"].tolist() == [0.5, 1.0] and b["runs"].tolist() == [2, 2]
    assert b["hi"].iloc[0] - b["mean"].iloc[0] == pytest.approx(math.sqrt(0.5))
    assert drift(hist.iloc[:0]) != drift(hist)  # empty history: NaNs
    assert all(math.isnan(x) for x in drift(hist.iloc[:0]))


def test_the_report_writes_the_rlgen_section(tmp_path):
    from medgr2.report.cli import build_report

    uri = build(tmp_path)
    report = build_report(uri, out=tmp_path / "rep", only=["rlgen"])
    text = report.path.read_text()
    assert "## RQ3" in text and "in-domain" in text and "hacking_cross_modality_grpo.png" in text
    assert (tmp_path / "rep" / "rlgen_modality_summary.csv").exists()
    assert (tmp_path / "rep" / "rlgen_modality_cross_modality_grpo.png").exists()


def test_the_claims_table_gets_the_rq3_rows_with_interval_and_verdict(tmp_path):
    from medgr2.report.aggregate import PredictionCache
    from medgr2.report.claims import claims_table
    from medgr2.report.mlflow_runs import load_runs

    runs = load_runs(build(tmp_path))
    table = claims_table(runs, PredictionCache(lambda rid: None)).set_index("claim")
    row = table.loc["GRPO (paper's reward) helps in-domain"]
    assert row["diff"] == pytest.approx(0.03) and row["seeds"] == 2 and row["difference"] == "+3.0"
    assert row["verdict"] == "inconclusive"  # two seeds, t(1): the interval spans 0 and the 1-point margin
    assert table.loc["GRPO (paper's reward) generalizes across modalities", "diff"] == pytest.approx(-0.01)
    assert table.loc["RL generalizes across tasks (GRPO, paper's reward, off-diagonal)", "verdict"] == "not measured"
