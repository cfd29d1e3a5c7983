"""Evaluation protocols (lenient, Med-R1, official OmniMedVQA, MedEvalKit letter): extraction, rescoring of saved
predictions, the MLflow param/tag, and the report's --protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgr2.evaluation.protocols import PROTOCOLS, check_protocol, extract, rescore, score

OPTIONS = ["Kidney", "Liver", "Spleen", "Heart"]

# response -> letter selected under (lenient, medr1, omnimedvqa, letter); gold is B (Liver) throughout.
CASES = [
    ("<think>x</think><answer>B</answer>", ("B", "B", "B", "B")),
    ("<answer>b</answer>", ("B", None, "B", None)),  # lower case: Med-R1 and the letter protocol say no
    ("<answer>(B)</answer>", ("B", None, "B", "B")),
    ("<answer>B) Liver</answer>", ("B", None, "B", None)),
    ("<answer>A</answer> no, wait: <answer>B</answer>", ("B", "A", "B", None)),  # first tag vs last tag
    ("<answer>Liver</answer>", (None, None, "B", None)),  # option text: only the official matching reads it
    ("The image shows the liver.", (None, None, "B", None)),
    ("B", (None, None, "B", "B")),  # a bare letter without tags
    ("B.", (None, None, "B", "B")),
    # The official matching reads no letters inside text: "Option B" is merely closest to the text "Kidney".
    ("<answer>Option B</answer>", (None, None, "A", None)),
    ("", (None, None, None, None)),
]


@pytest.mark.parametrize(("response", "letters"), CASES)
def test_each_protocol_reads_the_letter_its_peer_would(response: str, letters: tuple) -> None:
    for protocol, want in zip(PROTOCOLS, letters, strict=True):
        assert extract(protocol, response, OPTIONS) == want, (protocol, response)


def test_the_official_matching_takes_the_most_similar_option_text() -> None:
    opts = ["Normal", "Diabetic retinopathy", "Glaucoma", "Cataract"]
    assert extract("omnimedvqa", "<answer>diabetic retinopathy, moderate</answer>", opts) == "B"
    assert extract("omnimedvqa", "It is glaucomatous", opts) == "C"  # no option inside: closest by ratio
    # A reply that names two options falls back to similarity rather than the first one mentioned.
    assert extract("omnimedvqa", "Cataract", opts) == "D"


def test_score_compares_the_selected_letter_with_the_gold_one() -> None:
    rec = {"options": OPTIONS, "answer": "B"}
    assert score("medr1", "<answer>B</answer>", rec) == ("B", True)
    assert score("medr1", "<answer>b</answer>", rec) == (None, False)
    assert score("omnimedvqa", "spleen", rec) == ("C", False)


def test_rescore_replaces_pred_and_protocol_and_keeps_everything_else() -> None:
    rows = [{"id": str(i), "completion": r, "gold": "B", "n_options": 4, "options": OPTIONS, "pred": "B",
             "protocol": "lenient", "option_probs": [0.1, 0.6, 0.2, 0.1]} for i, (r, _) in enumerate(CASES)]
    for k, protocol in enumerate(PROTOCOLS):
        out = rescore(rows, protocol)
        assert [r["pred"] for r in out] == [letters[k] for _, letters in CASES]
        assert all(r["protocol"] == protocol and r["option_probs"] == rows[0]["option_probs"] for r in out)
    # One set of responses, four accuracies: numbers under different protocols are not comparable.
    accs = {p: sum(r["pred"] == "B" for r in rescore(rows, p)) for p in PROTOCOLS}
    assert accs == {"lenient": 5, "medr1": 1, "omnimedvqa": 9, "letter": 4}


def test_rescore_says_what_a_prediction_lacks() -> None:
    with pytest.raises(ValueError, match="no raw 'completion'"):
        rescore([{"id": "q1", "pred": "A", "gold": "A", "n_options": 2}], "medr1")
    old = [{"id": "q1", "completion": "<answer>A</answer>", "gold": "A", "n_options": 2}]
    assert rescore(old, "medr1")[0]["pred"] == "A"  # the letter protocols need only the number of options
    with pytest.raises(ValueError, match="omnimedvqa protocol needs"):
        rescore(old, "omnimedvqa")
    with pytest.raises(ValueError, match="unknown evaluation protocol 'strict'"):
        check_protocol("strict")


def test_evaluate_logs_its_protocol_and_the_report_rescores_saved_predictions(make_cfg, tmp_path) -> None:
    import mlflow

    from medgr2.evaluation.protocols import rescore as rescore_rows
    from medgr2.pipeline import run
    from medgr2.report.build import build_report
    from medgr2.report.cli import main

    cfg = make_cfg("stage=evaluate", "evaluate.protocol=medr1", "evaluate.limit=12", "experiment_name=zero_shot")
    metrics = run(cfg)
    preds = [json.loads(x) for x in (Path(cfg.paths.output_dir) / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and all(p["protocol"] == "medr1" for p in preds)
    assert all(isinstance(p["completion"], str) and len(p["options"]) == p["n_options"] for p in preds)
    assert [p["pred"] for p in rescore_rows(preds, "medr1")] == [p["pred"] for p in preds]
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    row = mlflow.search_runs(experiment_names=[cfg.logger.experiment]).query("`tags.stage` == 'evaluate'").iloc[0]
    assert row["params.evaluate.protocol"] == "medr1" and row["tags.protocol"] == "medr1"

    as_logged = build_report(cfg.logger.tracking_uri, cfg.logger.experiment, out=tmp_path / "r1", only=["table1"])
    assert "## Table 1 — accuracy per modality (protocol: medr1)" in as_logged.path.read_text()
    t1 = as_logged.tables["table1"]
    assert float(t1[t1["policy"] != "chance"]["Overall"].iloc[0]) == pytest.approx(metrics["test/acc"])

    lenient = rescore_rows(preds, "lenient")
    want = sum(p["pred"] == p["gold"] for p in lenient) / len(lenient)
    assert main(["--tracking-uri", cfg.logger.tracking_uri, "--experiment", cfg.logger.experiment,
                 "--out", str(tmp_path / "r2"), "--only", "table1", "--protocol", "lenient"]) == 0
    text = (tmp_path / "r2" / "report.md").read_text()
    assert "## Table 1 — accuracy per modality (protocol: lenient)" in text
    assert "Rescored 1 evaluation runs' saved predictions under the `lenient` protocol." in text
    import pandas as pd

    t1 = pd.read_csv(tmp_path / "r2" / "table1.csv")
    assert float(t1[t1["policy"] != "chance"]["Overall"].iloc[0]) == pytest.approx(want)


def test_a_misspelt_protocol_stops_the_run_before_any_training(make_cfg, tmp_path) -> None:
    from medgr2.pipeline import run

    cfg = make_cfg("stage=sft", "evaluate.protocol=medr2", "logger=none")
    with pytest.raises(ValueError, match="unknown evaluation protocol 'medr2'"):
        run(cfg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.ckpt"))
