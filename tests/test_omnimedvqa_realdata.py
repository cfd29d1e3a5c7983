"""OmniMedVQA as it really is: repeated options, answer-to-letter matching, train/test leakage, image_disjoint
and ``stage=inspect``'s report, on fixtures in both layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_omnimedvqa import write_medr1_fixture, write_omnimedvqa_fixture

from medgr2.data.leakage import content_hash, image_disjoint, leakage_report
from medgr2.data.omnimedvqa import load_omnimedvqa
from medgr2.data.omnimedvqa_medr1 import file_attribute
from medgr2.data.schema import (
    UNKNOWN,
    RecordError,
    make_record,
    option_index,
    repeated_options,
    validate_record,
)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("omni_real")
    return {"raw": (root / "raw", write_omnimedvqa_fixture(root / "raw")),
            "medr1": (root / "medr1", write_medr1_fixture(root / "medr1"))}


# ------------------------------------------------------------------------------ repeated options, matching


def test_repeated_options_are_grouped_up_to_case_and_spaces() -> None:
    assert repeated_options(["Thyroid Gland", "Liver", "Thyroid gland ", "Kidney"]) == [[0, 2]]
    assert repeated_options(["SPECT", "CT", "SPECT", "CT"]) == [[0, 2], [1, 3]]
    assert repeated_options(["Yes", "No"]) == []


def test_a_record_with_repeated_options_is_valid_unless_the_answer_repeats() -> None:
    base = dict(id="x", image="img.png", question="Which organ?", modality="US",
                question_type="Anatomy Identification")
    validate_record(make_record(**base, options=["Thyroid Gland", "Liver", "Thyroid gland"], answer="B"))
    with pytest.raises(RecordError) as err:
        validate_record(make_record(**base, options=["Thyroid Gland", "Liver", "Thyroid gland"], answer="C"))
    assert err.value.reason == "answer_is_repeated_option" and "Thyroid gland" in str(err.value)


@pytest.mark.parametrize(("answer", "options", "index"), [
    ("Brain", ["brain", "Brain", "Liver"], 1),  # exact wins over the first case-insensitive match
    ("  brain ", ["Liver", "Brain"], 1),  # ignoring case and spaces when that is unique
    ("CT", ["SPECT", "CT", "SPECT"], 1),
])
def test_answer_text_to_letter_is_exact_first_then_unique_case_insensitive(answer, options, index) -> None:
    assert option_index(answer, options) == index


@pytest.mark.parametrize(("answer", "options", "reason"), [
    ("THYROID GLAND", ["Thyroid Gland", "thyroid gland", "Liver"], "ambiguous_answer"),
    ("SPECT", ["SPECT", "CT", "SPECT"], "answer_is_repeated_option"),
    ("Spleen", ["Liver", "Kidney"], "answer_not_in_options"),
])
def test_answer_text_that_names_no_single_option_is_a_reasoned_skip(answer, options, reason) -> None:
    with pytest.raises(RecordError) as err:
        option_index(answer, options, where="Q.json item 3")
    assert err.value.reason == reason and str(err.value).startswith("Q.json item 3")


def test_raw_layout_keeps_repeated_option_items_and_skips_the_ambiguous_ones(trees) -> None:
    root, expected = trees["raw"]
    res = load_omnimedvqa(root)
    by_id = {r["id"]: r for r in res.records}
    for rid in expected["repeated_option_ids"]:
        assert by_id[rid]["answer"] == expected["records"][rid]["answer"]
        assert repeated_options(by_id[rid]["options"])
    assert res.warnings["repeated_options"] == len(expected["repeated_option_ids"])
    assert any("'Thyroid Gland' / 'Thyroid gland'" in m for m in res.warning_examples["repeated_options"])
    assert "AlphaCT/a-15" in res.examples["answer_is_repeated_option"][0]
    assert "AlphaCT/a-16" in res.examples["ambiguous_answer"][0] and "none exactly" in res.examples["ambiguous_answer"][0]


def test_medr1_layout_keeps_repeated_option_items_in_both_trees(trees) -> None:
    root, expected = trees["medr1"]
    for axis in ("modality", "question_type"):
        res = load_omnimedvqa(root, axis=axis)
        kept = {r["question"] for r in res.records if repeated_options(r["options"])}
        assert kept == {q for q, e in expected[axis]["by_question"].items() if e["repeated"]} == {
            "Which organ?", "Which modality?"}
        assert res.skipped["answer_is_repeated_option"] == 1


def test_medr1_file_names_give_one_attribute_and_unknown_is_unknown() -> None:
    assert file_attribute("CT(Computed Tomography)_train", "modality") == "CT"
    assert file_attribute("OCT (Optical Coherence Tomography_test", "modality") == "OCT"
    assert file_attribute("OBA_train", "question_type") == "Other Biological Attributes"
    assert file_attribute("unknown_train", "modality") == UNKNOWN
    with pytest.raises(RecordError):
        file_attribute("Thermal_train", "modality")


# ------------------------------------------------------------------------------------------------ leakage


@pytest.mark.parametrize(("layout", "axis"), [("raw", "modality"), ("medr1", "modality"), ("medr1", "question_type")])
def test_leakage_counts_images_shared_by_train_and_test_by_path_and_by_content(trees, layout, axis) -> None:
    root, expected = trees[layout]
    exp = expected["leakage"] if layout == "raw" else expected[axis]["leakage"]
    leak = leakage_report(load_omnimedvqa(root, axis=axis).records)
    assert {k: v for k, v in leak.as_dict().items() if k != "examples"} == exp
    assert all(Path(p).is_file() for p in leak.examples)
    assert leak.metrics()["data/leakage/shared_by_content"] == exp["shared_by_content"]


def test_content_hash_sees_a_byte_copy_under_another_name(tmp_path) -> None:
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    a.write_bytes(b"\x89PNG same bytes")
    b.write_bytes(a.read_bytes())
    c.write_bytes(b"\x89PNG other bytes")
    assert content_hash(a) == content_hash(b) != content_hash(c)
    assert content_hash(tmp_path / "missing.png") is None


def test_image_disjoint_removes_only_training_questions_about_test_images() -> None:
    recs = [{"id": "1", "split": "train", "image": "/x/a.png"}, {"id": "2", "split": "test", "image": "/x/a.png"},
            {"id": "3", "split": "train", "image": "/x/b.png"}, {"id": "4", "split": "val", "image": "/x/b.png"}]
    kept, removed = image_disjoint(recs, by_content=False)
    assert [r["id"] for r in kept] == ["2", "3", "4"] and removed == 1


@pytest.mark.parametrize(("layout", "axis"), [("raw", "modality"), ("medr1", "modality"), ("medr1", "question_type")])
def test_data_image_disjoint_removes_shared_images_from_training(trees, layout, axis) -> None:
    root, expected = trees[layout]
    exp = expected if layout == "raw" else expected[axis]
    full = load_omnimedvqa(root, axis=axis)
    train = load_omnimedvqa(root, axis=axis, split="train", image_disjoint=True)
    removed = exp["leakage"]["train_questions"]
    assert train.filtered["image_disjoint"] == removed
    assert len(train.records) == exp["splits"]["train"] - removed
    test = load_omnimedvqa(root, axis=axis, split="test", image_disjoint=True)
    assert [r["id"] for r in test.records] == [r["id"] for r in full.records if r["split"] == "test"]
    after = leakage_report(load_omnimedvqa(root, axis=axis, image_disjoint=True).records)
    assert after.shared_by_path == after.shared_by_content == 0
    limited = load_omnimedvqa(root, axis=axis, split="train", image_disjoint=True, limit=2)
    assert [r["id"] for r in limited.records] == [r["id"] for r in train.records[:2]] and limited.truncated


def test_the_same_question_in_train_and_test_is_counted_as_leakage(tmp_path) -> None:
    from PIL import Image

    (tmp_path / "Images" / "Set").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "Images" / "Set" / "a.png")
    item = {"image": "Images/Set/a.png", "problem": "Is it CT? A)yes, B)no", "solution": "<answer> A </answer>"}
    for split in ("train", "test"):
        path = tmp_path / "Splits" / "modality" / split / f"CT_{split}.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps([item]))
    res = load_omnimedvqa(tmp_path)
    assert [r["split"] for r in res.records] == ["train"] and res.skipped == {"duplicate_id": 1}
    assert res.warnings["question_in_two_splits"] == 1
    assert "CT_test.json" in res.warning_examples["question_in_two_splits"][0]


# ------------------------------------------------------------------------------------------- stage=inspect


def test_inspect_on_the_medr1_fixture_shows_filled_attributes_repeats_and_leakage(make_cfg, tmp_path, capsys) -> None:
    import mlflow

    from medgr2.pipeline import run

    data = tmp_path / "medr1"
    expected = write_medr1_fixture(data, qa_root=tmp_path / "OmniMedVQA")["modality"]
    cfg = make_cfg("stage=inspect", "data=omnimedvqa", f"data.root={data}", f"data.qa_root={tmp_path / 'OmniMedVQA'}",
                   test_size=False)
    run(cfg)
    out = capsys.readouterr().out
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    row = mlflow.search_runs(experiment_names=[cfg.logger.experiment]).iloc[0]
    metrics = {k[len("metrics."):]: v for k, v in row.items() if k.startswith("metrics.")}
    assert "Attributes: where each value came from" in out
    assert "question_type <- Splits/question_type" in out and "question_type <- QA_information" in out
    assert "repeated_options" in out and "Thyroid Gland" in out
    assert "Train/test image leakage" in out and "images shared, by content (SHA-256)" in out
    assert "WARNING: 3 images are in both the train and the test split" in out
    assert metrics["data/leakage/shared_by_path"] == expected["leakage"]["shared_by_path"]
    assert metrics["data/leakage/shared_by_content"] == expected["leakage"]["shared_by_content"]
    assert metrics["data/warnings/repeated_options"] == 2
    assert metrics["data/attributes/question_type_from_QA_information"] == 1
    saved = json.loads((Path(cfg.paths.output_dir) / "data_stats.json").read_text())
    assert saved["leakage"]["train_questions"] == expected["leakage"]["train_questions"]


def test_inspect_on_the_raw_fixture_reports_content_leakage_and_image_disjoint(make_cfg, tmp_path, capsys) -> None:
    from medgr2.pipeline.inspect_data import run_inspect
    from medgr2.pipeline.tracking import Tracker  # the base class logs nothing

    data = tmp_path / "raw"
    expected = write_omnimedvqa_fixture(data)
    cfg = make_cfg("stage=inspect", "data=omnimedvqa", f"data.root={data}", "logger=none", test_size=False)
    metrics = run_inspect(cfg, Tracker())
    out = capsys.readouterr().out
    assert "Attributes: where each value came from" not in out  # raw items carry both
    assert metrics["data/leakage/shared_by_path"] == 0 and metrics["data/leakage/shared_by_content"] == 1
    assert "a3.png" in out and "repeated_options" in out
    cfg = make_cfg("stage=inspect", "data=omnimedvqa", f"data.root={data}", "data.image_disjoint=true",
                   "logger=none", test_size=False)
    metrics = run_inspect(cfg, Tracker())
    out = capsys.readouterr().out
    assert "data.image_disjoint=true removed 1 training questions" in out
    assert metrics["data/filtered/image_disjoint"] == 1 and metrics["data/leakage/shared_by_content"] == 0
    assert metrics["data/total"] == expected["n_records"] - 1
