"""``python -m medgr2.report`` on a multi-seed MLflow store: seeds averaged with intervals, paired comparisons,
the generated claims table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_fixtures import N_Q, SEED_ARMS, seed_store  # noqa: F401

from medgr2.report.cli import main
from medgr2.report.significance import mcnemar_exact


@pytest.fixture(scope="module")
def seed_report(seed_store, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("seed_report")
    assert main(["--tracking-uri", seed_store.uri, "--out", str(out)]) == 0
    return seed_store, out


def test_a_cell_is_the_mean_of_its_seeds_with_an_interval_and_the_seed_count(seed_report):
    store, out = seed_report
    pts = pd.read_csv(out / "fig2.csv")
    topk = pts[(pts["series"] == "TopK") & (pts["k"] == 1000)].iloc[0]
    logged = [sum(store.correct[("topk-1000", s)]) / N_Q for s in (0, 1, 2)]
    assert topk["acc"] == pytest.approx(np.mean(logged))
    assert topk["seeds"] == 3 and topk["acc lo"] < topk["acc"] < topk["acc hi"]
    # Wider than the question part alone: the seeds disagree (74, 77, 72).
    assert topk["acc hi"] - topk["acc lo"] > 2 * 1.96 * np.sqrt(0.74 * 0.26 / N_Q / 3)
    assert set(topk["run_id"].split(",")) == {store.ids[("topk-1000", s)] for s in (0, 1, 2)}
    t2 = pd.read_csv(out / "table2.csv").set_index("policy")
    assert t2.loc["SFT raw", "synthmed/test/seeds"] == 1 and t2.loc["SFT rewarded", "synthmed/test/seeds"] == 2


def test_markdown_cells_print_mean_plus_minus_half_width_and_the_report_states_the_method(seed_report):
    _, out = seed_report
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if "| TopK | topk | 1000 |" in line)
    mean, half = row.split("|")[5].strip().split(" ± ")
    assert float(mean) == pytest.approx(74.33, abs=0.01) and 0 < float(half) < 20
    assert row.rstrip(" |").endswith("3")
    assert "Welch–Satterthwaite" in md and "bootstrap over the questions" in md


def test_claims_table_has_difference_ci_p_and_verdict_for_each_claim(seed_report):
    store, out = seed_report
    claims = pd.read_csv(out / "claims.csv").set_index("claim")
    row = claims.loc["TopK > RandK at K=1,000"]
    diffs = [(sum(store.correct[("topk-1000", s)]) - sum(store.correct[("randk-1000", s)])) / N_Q for s in (0, 1, 2)]
    assert row["diff"] == pytest.approx(np.mean(diffs)) and row["seeds"] == 3
    assert row["lo"] > 0 and row["verdict"] == "reproduced" and row["p_value"] < 0.05
    # 0.7 points with a ~5-point interval: neither reached nor refuted.
    assert claims.loc["TopK@2,000 ≥ Rand-all", "verdict"] == "inconclusive"
    assert claims.loc["GRPO gain at K=2,000", "verdict"] == "inconclusive"
    assert claims.loc["GRPO helps most at small K (gain at K=1,000 > at K=2,000)", "verdict"] == "reproduced"
    sft = claims.loc["rewarded SFT > raw SFT"]
    b, c = _discordant(store.correct[("sft-raw", 0)], store.correct[("sft-rewarded", 0)])
    assert sft["seeds"] == 1 and sft["test"] == "McNemar exact, 1 seed"
    assert sft["p_value"] == pytest.approx(mcnemar_exact(b, c))
    grpo = claims.loc["GRPO after rewarded SFT > rewarded SFT (Table 2)"]
    gains = [(sum(store.correct[("grpo", s)]) - sum(store.correct[("sft-rewarded", s)])) / N_Q for s in (0, 1)]
    assert grpo["seeds"] == 2 and grpo["diff"] == pytest.approx(np.mean(gains))
    loop = claims.loc["the loop improves across iterations (default)"]
    assert loop["diff"] == pytest.approx(0.08) and loop["verdict"] == "reproduced"
    assert claims.filter(like="cross-modality", axis=0)["verdict"].tolist() == ["reproduced"]
    md = (out / "report.md").read_text()
    assert "## The paper's claims, tested" in md and "| TopK > RandK at K=1,000 |" in md


def _discordant(a, b) -> tuple[int, int]:
    return sum(x and not y for x, y in zip(a, b, strict=True)), sum(y and not x for x, y in zip(a, b, strict=True))


def test_compare_prints_the_seed_matched_paired_comparison(seed_store, capsys):  # noqa: F811
    assert main(["--tracking-uri", seed_store.uri, "--compare", "randk k=1000", "topk k=1000"]) == 0
    text = capsys.readouterr().out
    assert "B = topk k=1000   vs   A = randk k=1000" in text
    assert f"{N_Q} shared test questions, 3 seed(s): 0, 1, 2" in text
    for s in (0, 1, 2):
        a, b = seed_store.correct[("randk-1000", s)], seed_store.correct[("topk-1000", s)]
        only_a, only_b = _discordant(a, b)
        line = next(x for x in text.splitlines() if x.startswith(f"{s:>4}  "))
        assert f"{only_a:6d}  {only_b:6d}" in line
    assert "difference B - A: +19.67 points, 95% CI [" in text and "seed-matched t, 3 seeds" in text


def test_compare_names_the_choices_when_an_arm_is_ambiguous(seed_store, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as exc:
        main(["--tracking-uri", seed_store.uri, "--compare", "topk", "randk k=1000"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "matches 2 settings" in err and "topk k=1000" in err and "topk k=2000" in err


def test_single_seed_cells_say_so(seed_report):
    _, out = seed_report
    t1 = pd.read_csv(out / "table1.csv").set_index("policy")
    assert t1.loc["sft_raw", "seeds"] == 1 and t1.loc["rand_all", "seeds"] == 3
    assert SEED_ARMS["sft-raw"][3].keys() == {0}
