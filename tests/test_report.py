"""``python -m medgr2.report`` on a real MLflow SQLite store with hand-chosen metrics and predictions."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from PIL import Image
from report_fixtures import EXPECTED_CHANCE, EXPECTED_TRANSITIONS, predictions, report_store  # noqa: F401

from medgr2.report.cli import main
from medgr2.report.figure_data import TRANSITIONS, transitions
from medgr2.report.render import to_csv, to_latex, to_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def full_report(report_store, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("report")
    assert main(["--tracking-uri", report_store.uri, "--out", str(out)]) == 0
    return report_store, out


def _csv(out, name: str, **kw) -> pd.DataFrame:
    return pd.read_csv(out / f"{name}.csv", keep_default_na=True, **kw)


def test_table1_csv_holds_the_logged_accuracies_of_the_latest_run_per_policy(full_report):
    store, out = full_report
    t1 = _csv(out, "table1").set_index("policy")
    for name, label in [("zero-shot", "zero_shot"), ("sft-raw", "sft_raw"), ("sft-rewarded", "sft_rewarded"),
                        ("grpo", "MedGR2 (SFT+GRPO)"), ("randk-1000", "randk k=1000"), ("topk-2000", "topk k=2000"),
                        ("xmod-MRI", "cross_modality source=MRI")]:
        logged = store.metrics[name]
        row = t1.loc[label]
        assert row["run_id"] == store.ids[name]
        assert row["Overall"] == logged["test/acc"]
        for mod in ("CT", "MRI", "X-Ray"):
            assert row[mod] == logged[f"test/acc/modality/{mod}"]
    # Two finished sft_raw runs: the latest one (0.5) fills the row, the older one (0.109375) does not.
    assert store.metrics["sft-raw-old"]["test/acc"] not in set(t1["Overall"])


def test_child_failed_and_non_evaluation_runs_are_not_used(full_report):
    store, out = full_report
    t1 = _csv(out, "table1")
    used = set(t1["run_id"])
    for name in ("child-of-grpo", "failed-rewarded", "generate-pool"):
        assert store.ids[name] not in used
    assert 0.96875 not in set(t1["Overall"]) and 0.90625 not in set(t1["Overall"])
    md = (out / "report.md").read_text()
    assert store.ids["child-of-grpo"] not in md and store.ids["failed-rewarded"] not in md
    assert "1 child runs" in md and "FAILED: 1" in md and "generate: 1" in md


def test_table1_chance_row_uses_logged_overall_chance_and_predictions_per_modality(full_report):
    _, out = full_report
    chance = _csv(out, "table1").set_index("policy").loc["chance"]
    assert chance["Overall"] == 0.3125
    for mod, value in EXPECTED_CHANCE.items():
        assert chance[mod] == pytest.approx(value)
    assert _csv(out, "table1")["policy"].iloc[-1] == "chance"


def test_table2_rows_are_the_ablation_recipes_with_acc_f1_auc(full_report):
    store, out = full_report
    t2 = _csv(out, "table2").set_index("policy")
    assert list(t2.index) == ["base", "SFT raw", "SFT rewarded", "+GRPO"]
    assert list(t2.columns) == [f"synthmed/test/{c}" for m in ("Acc", "F1", "AUC") for c in (m, f"{m} lo", f"{m} hi")
                                ] + ["synthmed/test/seeds"]
    for row, name in [("base", "zero-shot"), ("SFT raw", "sft-raw"), ("SFT rewarded", "sft-rewarded"),
                      ("+GRPO", "grpo")]:
        m = store.metrics[name]
        assert t2.loc[row, "synthmed/test/Acc"] == m["test/acc"]
        assert t2.loc[row, "synthmed/test/F1"] == m["test/f1"]
        auc = t2.loc[row, "synthmed/test/AUC"]
        assert (math.isnan(auc) and "test/auc" not in m) or auc == m["test/auc"]
    # Acc has an interval (the grpo run saved predictions: bootstrap over its questions), F1 none (one seed,
    # no per-question F1), AUC was not logged; then the seed count.
    assert re.search(r"\+GRPO & 62\.50 \$\\pm\$ \d+\.\d\d & 59\.38 & -- & 1 \\\\", (out / "table2.tex").read_text())


def test_fig2_points_are_grouped_by_k_with_rand_all_as_reference(full_report):
    store, out = full_report
    pts = _csv(out, "fig2")
    got = {(r.series, int(r.k)): r.acc for r in pts.itertuples()}
    expected = {("RandK", 1000): "randk-1000", ("RandK", 2000): "randk-2000", ("TopK", 1000): "topk-1000",
                ("TopK", 2000): "topk-2000", ("TopK+GRPO", 1000): "topk_grpo-1000",
                ("TopK+GRPO", 2000): "topk_grpo-2000", ("Rand-all", 4000): "rand-all"}
    assert got == {key: store.metrics[name]["test/acc"] for key, name in expected.items()}


def test_fig4_rows_are_training_sources_and_cells_the_logged_group_accuracies(full_report):
    store, out = full_report
    mod = _csv(out, "fig4b_cross_modality", index_col=0)
    assert list(mod.index) == ["CT", "MRI"] and list(mod.columns) == ["CT", "MRI", "X-Ray"]
    assert mod.loc["CT", "CT"] == store.metrics["xmod-CT"]["test/acc/modality/CT"]
    assert mod.loc["MRI", "CT"] == store.metrics["xmod-MRI"]["test/acc/modality/CT"]
    task = _csv(out, "fig4a_cross_task", index_col=0)
    # Tag spellings ("Disease_Diagnosis", "Modality Recognition") map to the canonical names, canonical order.
    assert list(task.index) == ["Modality Recognition", "Disease Diagnosis"]
    assert task.loc["Disease Diagnosis", "Disease Diagnosis"] == 0.71875
    assert task.loc["Modality Recognition", "Disease Diagnosis"] == 0.34375


def test_fig5_counts_equal_the_hand_computed_transitions(full_report):
    store, out = full_report
    trans = _csv(out, "fig5", index_col=0)
    assert trans.to_dict("index") == EXPECTED_TRANSITIONS
    md = (out / "report.md").read_text()
    assert "1 compared predictions have no partner id" in md
    # Defaults: best sft_raw run vs best grpo / topk_grpo run.
    assert f"| fig5 | baseline | {store.ids['sft-raw']} |" in md
    assert f"| fig5 | compare | {store.ids['grpo']} |" in md


def test_every_figure_is_a_non_empty_valid_png(full_report):
    _, out = full_report
    for name in ("fig2", "fig4a_cross_task", "fig4b_cross_modality", "fig5"):
        path = out / f"{name}.png"
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as im:
            im.verify()
            assert im.size[0] > 100 and im.size[1] > 100


def test_report_md_embeds_tables_links_figures_and_lists_skipped_runs_with_reasons(full_report):
    store, out = full_report
    md = (out / "report.md").read_text()
    for name in ("table1", "table2"):
        assert (out / f"{name}.md").read_text().strip() in md
        assert f"[{name}.csv]({name}.csv)" in md and f"[{name}.tex]({name}.tex)" in md
    for name in ("fig2", "fig4a_cross_task", "fig4b_cross_modality", "fig5"):
        assert f"]({name}.png)" in md
    skipped = md.split("## Skipped runs", 1)[1]
    assert f"| {store.ids['think-without-eval']} | think-without-eval | sft_think | sft | no test/acc metric |" in skipped
    assert f"| {store.ids['randk-no-k']} | randk-no-k | randk | sft | no k tag | fig2 |" in skipped
    # Two runs of one row: the latest is used, and the report says so.
    assert (f"2 finished runs share the row 'sft_raw' on synthmed; used the latest, {store.ids['sft-raw'][:8]}"
            in md)


def test_missing_predictions_artifact_skips_fig5_and_lists_the_run(report_store, tmp_path):  # noqa: F811
    out = tmp_path / "r"
    main(["--tracking-uri", report_store.uri, "--out", str(out), "--only", "fig5",
          "--baseline", "zero_shot", "--compare", report_store.ids["grpo"][:10]])
    md = (out / "report.md").read_text()
    assert not (out / "fig5.png").exists()
    skipped = md.split("## Skipped runs", 1)[1]
    assert report_store.ids["zero-shot"] in skipped and "no readable predictions.jsonl artifact" in skipped
    assert f"Figure 5 compare: run {report_store.ids['grpo'][:8]}" in md
    assert not (out / "table1.csv").exists()


def test_experiment_and_tag_filters_restrict_the_runs(report_store, tmp_path):  # noqa: F811
    out = tmp_path / "r"
    main(["--tracking-uri", report_store.uri, "--out", str(out), "--only", "fig2,table1",
          "--experiments", "randk,topk", "--tag", "k=1000,2000"])
    pts = _csv(out, "fig2")
    assert set(pts["series"]) == {"RandK", "TopK"} and set(pts["k"]) == {1000, 2000}
    assert set(_csv(out, "table1")["policy"]) == {"randk k=1000", "randk k=2000", "topk k=1000", "topk k=2000",
                                                   "chance"}
    assert not (out / "fig5.png").exists() and not (out / "table2.csv").exists()


def test_unknown_section_and_malformed_tag_are_usage_errors(report_store, tmp_path, capsys):  # noqa: F811
    for bad in (["--only", "table9"], ["--tag", "experiment"]):
        with pytest.raises(SystemExit) as exc:
            main(["--tracking-uri", report_store.uri, "--out", str(tmp_path), *bad])
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--tracking-uri", "--experiment ", "--experiments", "--tag", "--out", "--baseline", "--compare",
                "--only"):
        assert opt in text


def test_transitions_treat_unparseable_as_wrong_and_drop_unpaired_or_conflicting_ids():
    base = predictions("baseline") + [{"id": "qx", "modality": "OCT", "gold": "A", "pred": "A"}]
    comp = predictions("compare") + [{"id": "qx", "modality": "OCT", "gold": "B", "pred": "B"}]
    t = transitions(base, comp)
    assert t.to_dict("index") == EXPECTED_TRANSITIONS
    assert any("different gold answers" in n for n in t.attrs["notes"])
    assert list(t.columns) == ["n", *TRANSITIONS]


def test_renderers_print_percent_but_csv_keeps_exact_fractions(tmp_path):
    df = pd.DataFrame({"policy": ["a_b", "c"], "acc": [0.123456, math.nan], "k": pd.array([1000, None], "Int64")})
    md = to_markdown(df)
    assert "| a_b | 12.35 | 1000 |" in md and "| c | – | – |" in md
    tex = to_latex(df)
    assert r"a\_b & 12.35 & 1000 \\" in tex and r"\toprule" in tex
    back = pd.read_csv(to_csv(df, tmp_path / "t.csv"))
    assert back.loc[0, "acc"] == 0.123456


def test_the_question_type_table_shows_each_runs_logged_accuracy_per_type(report_store):  # noqa: F811
    from medgr2.report.mlflow_runs import load_runs
    from medgr2.report.tables import qtype_table

    text = qtype_table(load_runs(report_store.uri, "medgr2", "experiment", ["cross_task"]))
    assert "| cross_task | 50.0 | 84.4 | – | 34.4 |" in text
