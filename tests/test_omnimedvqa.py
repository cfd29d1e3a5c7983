"""OmniMedVQA loader: raw and Med-R1 layouts, exact record / skip counts on a fixture with bad items."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from fixtures_omnimedvqa import write_medr1_fixture, write_omnimedvqa_fixture

from medgr2.data import schema
from medgr2.data.omnimedvqa import (
    LoadResult,
    detect_layout,
    hash_split,
    load_omnimedvqa,
    parse_problem,
    parse_solution,
)


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("omni_raw")
    return root, write_omnimedvqa_fixture(root)


@pytest.fixture(scope="module")
def raw_result(raw_tree: tuple[Path, dict]) -> LoadResult:
    return load_omnimedvqa(raw_tree[0])


@pytest.fixture(scope="module")
def medr1_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("omni_medr1")
    return root, write_medr1_fixture(root)


# ----------------------------------------------------------------------------------------- raw layout


def test_raw_exact_counts(raw_tree: tuple[Path, dict], raw_result: LoadResult) -> None:
    _, expected = raw_tree
    assert raw_result.layout == "raw"
    assert len(raw_result.records) == expected["n_records"]
    assert dict(raw_result.skipped) == expected["skipped"]
    assert dict(raw_result.warnings) == expected["warnings"]
    assert raw_result.filtered == Counter()
    assert not raw_result.truncated
    assert Counter(r["dataset"] for r in raw_result.records) == expected["datasets"]
    assert Counter(r["split"] for r in raw_result.records) == expected["splits"]


def test_raw_records_fields(raw_tree: tuple[Path, dict], raw_result: LoadResult) -> None:
    root, expected = raw_tree
    by_id = {r["id"]: r for r in raw_result.records}
    assert set(by_id) == set(expected["records"])
    for rid, exp in expected["records"].items():
        rec = by_id[rid]
        # gt_answer text -> letter (case and spaces ignored), answer_text is the option's own text.
        assert rec["answer"] == exp["answer"], rid
        assert rec["answer_text"] == exp["answer_text"], rid
        assert len(rec["options"]) == exp["n_options"], rid
        assert rec["modality"] == exp["modality"], rid
        assert rec["question_type"] == exp["question_type"], rid
        assert set(rec) == set(schema.FIELDS)
        assert rec["rationale"] == ""
        schema.validate_record(rec)
        img = Path(rec["image"])
        assert img.is_absolute() and img.is_file() and img.is_relative_to(root)
        prov = schema.provenance(rec)
        assert prov["source"] == "omnimedvqa" and prov["layout"] == "raw"
        assert prov["file"] == f"QA_information/Open-access/{rec['dataset']}.json"
        assert rid.endswith("/" + str(prov["question_id"]))


def test_raw_specific_cases(raw_result: LoadResult) -> None:
    by_id = {r["id"]: r for r in raw_result.records}
    # The OCT string without its closing parenthesis, from a file using "modality" instead of "modality_type".
    assert by_id["BetaEye/101"]["modality"] == "OCT"
    # 2-option items: C/D absent and C/D empty strings give the same 2-element option list.
    assert by_id["AlphaCT/a-3"]["options"] == ["Yes", "No"]
    assert by_id["AlphaCT/a-4"]["options"] == ["Yes", "No"]
    # The duplicate id keeps the first item.
    assert by_id["AlphaCT/a-1"]["question"] == "What modality is used?"
    # Integer question ids become strings.
    assert json.loads(by_id["BetaEye/105"]["provenance"])["question_id"] == 105


def test_raw_examples_name_file_and_record(raw_result: LoadResult) -> None:
    assert set(raw_result.examples) == set(raw_result.skipped)
    for reason, messages in raw_result.examples.items():
        assert 1 <= len(messages) <= raw_result.skipped[reason]
        for msg in messages:
            assert ".json" in msg, msg
            if reason != "malformed_json":
                assert " item " in msg, msg
    assert "Broken.json" in raw_result.examples["malformed_json"][0]
    assert "AlphaCT/a-8" in raw_result.examples["answer_not_in_options"][0]
    assert "a_missing.png" in raw_result.examples["missing_image"][0]
    assert any("a_corrupt.png" in m for m in raw_result.examples["unreadable_image"])
    assert any("a_empty.png" in m for m in raw_result.examples["unreadable_image"])
    assert raw_result.n_skipped == sum(raw_result.skipped.values())


def test_raw_split_is_deterministic_partition(raw_tree: tuple[Path, dict], raw_result: LoadResult) -> None:
    root, expected = raw_tree
    ids_by_split = {}
    for split in ("train", "val", "test"):
        res = load_omnimedvqa(root, split=split)
        assert {r["split"] for r in res.records} <= {split}
        assert len(res.records) == expected["splits"][split]
        ids_by_split[split] = {r["id"] for r in res.records}
    all_ids = {r["id"] for r in raw_result.records}
    assert ids_by_split["train"] | ids_by_split["val"] | ids_by_split["test"] == all_ids
    assert sum(len(v) for v in ids_by_split.values()) == len(all_ids)
    # Questions about one image stay in one split.
    by_id = {r["id"]: r for r in raw_result.records}
    a, b = expected["shared_image_ids"]
    assert by_id[a]["image"] == by_id[b]["image"] and by_id[a]["split"] == by_id[b]["split"]
    # Stable across calls.
    again = load_omnimedvqa(root)
    assert [(r["id"], r["split"]) for r in again.records] == [
        (r["id"], r["split"]) for r in raw_result.records
    ]


def test_hash_split_fractions() -> None:
    counts = Counter(hash_split(f"Images/X/{i}.png") for i in range(20000))
    assert abs(counts["train"] / 20000 - 0.8) < 0.02
    assert abs(counts["val"] / 20000 - 0.1) < 0.015
    assert abs(counts["test"] / 20000 - 0.1) < 0.015
    assert hash_split("abc") == hash_split("abc")


def test_raw_filters_and_limit(raw_tree: tuple[Path, dict]) -> None:
    root, expected = raw_tree
    mri = load_omnimedvqa(root, modalities=["MR"])  # aliases accepted
    assert [r["id"] for r in mri.records] == ["AlphaCT/a-2"]
    assert mri.filtered["modality"] > 0
    dd = load_omnimedvqa(root, question_types="disease diagnosis")  # a single string is one value
    n_dd = sum(e["question_type"] == "Disease Diagnosis" for e in expected["records"].values())
    assert len(dd.records) == n_dd and {r["question_type"] for r in dd.records} == {"Disease Diagnosis"}
    limited = load_omnimedvqa(root, limit=3)
    assert len(limited.records) == 3 and limited.truncated
    assert [r["id"] for r in limited.records] == ["AlphaCT/a-1", "AlphaCT/a-2", "AlphaCT/a-3"]
    with pytest.raises(ValueError, match="modalities"):
        load_omnimedvqa(root, modalities=["PET"])


def test_raw_records_become_a_dataset(raw_result: LoadResult) -> None:
    ds = schema.to_dataset(raw_result.records[:2])
    assert len(ds) == 2
    assert ds[0]["image"].size == (8, 8)  # the path was read and encoded by datasets.Image


def test_layout_detection_and_errors(
    tmp_path: Path, raw_tree: tuple[Path, dict], medr1_tree: tuple[Path, dict]
) -> None:
    assert detect_layout(raw_tree[0]) == "raw"
    assert detect_layout(medr1_tree[0]) == "medr1"
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_omnimedvqa(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_omnimedvqa(empty)
    msg = str(err.value)
    assert str(empty) in msg and "QA_information" in msg and "Splits" in msg
    with pytest.raises(FileNotFoundError, match="QA_information"):
        load_omnimedvqa(medr1_tree[0], layout="raw")
    with pytest.raises(ValueError, match="layout"):
        load_omnimedvqa(raw_tree[0], layout="parquet")
    with pytest.raises(ValueError, match="split"):
        load_omnimedvqa(medr1_tree[0], split="val")  # Med-R1 has train/test only
    with pytest.raises(ValueError, match="axis"):
        load_omnimedvqa(medr1_tree[0], axis="dataset")


def test_unverified_images_still_catch_bad_headers(raw_tree: tuple[Path, dict]) -> None:
    res = load_omnimedvqa(raw_tree[0], verify_images=False)
    assert dict(res.skipped) == raw_tree[1]["skipped"]


# --------------------------------------------------------------------------------------- Med-R1 layout


@pytest.mark.parametrize("axis", ["modality", "question_type"])
def test_medr1_tree_joins_the_missing_attribute_from_the_other_tree(medr1_tree: tuple[Path, dict], axis: str) -> None:
    root, expected_all = medr1_tree
    expected = expected_all[axis]
    res = load_omnimedvqa(root, axis=axis)
    assert res.layout == "medr1"
    assert len(res.records) == expected["n_records"]
    assert dict(res.skipped) == expected["skipped"]
    assert dict(res.warnings) == expected["warnings"]
    assert Counter(r["split"] for r in res.records) == expected["splits"]
    _check_medr1_records(res, expected["by_question"], axis)
    for reason, messages in res.examples.items():
        assert all("Splits/" in m for m in messages), reason


def _check_medr1_records(res: LoadResult, by_question: dict, axis: str) -> None:
    by_q = {r["question"]: r for r in res.records}
    assert set(by_q) == set(by_question)
    for question, exp in by_question.items():
        rec = by_q[question]
        schema.validate_record(rec)
        for key in ("options", "answer", "answer_text", "modality", "question_type", "split"):
            assert rec[key] == exp[key], (question, key)
        prov = schema.provenance(rec)
        assert prov["layout"] == "medr1" and prov["known_axis"] == axis
        assert prov["attributes"] == exp["sources"], question
        assert "join" not in prov  # the join keys are dropped once used
        assert Path(rec["image"]).is_absolute() and Path(rec["image"]).is_file()
        assert rec["dataset"] == Path(prov["image_path"]).parts[1]
    # Sources are counted: every record once per attribute.
    assert sum(res.attributes.values()) == 2 * len(res.records)


@pytest.mark.parametrize("axis", ["modality", "question_type"])
def test_medr1_attribute_missing_from_both_trees_comes_from_qa_information(tmp_path: Path, axis: str) -> None:
    root, qa = tmp_path / "medr1", tmp_path / "OmniMedVQA"
    expected = write_medr1_fixture(root, qa_root=qa)[axis]
    res = load_omnimedvqa(root, axis=axis, qa_root=qa)
    assert len(res.records) == expected["n_records"]
    assert dict(res.warnings) == expected["with_qa"]["warnings"]
    _check_medr1_records(res, expected["with_qa"]["by_question"], axis)
    assert res.attributes[f"{'question_type' if axis == 'modality' else 'modality'} <- QA_information"] >= 1
    with pytest.raises(FileNotFoundError, match="qa_root"):
        load_omnimedvqa(root, axis=axis, qa_root=tmp_path / "nowhere")


def test_medr1_unknown_attribute_is_never_guessed_and_warned_once(medr1_tree: tuple[Path, dict]) -> None:
    root, expected = medr1_tree
    res = load_omnimedvqa(root, axis="modality")
    unknown = [r for r in res.records if "unknown" in (r["modality"], r["question_type"])]
    # One warning message per attribute with its count, not one per record.
    assert res.warnings["attribute_unknown"] == len(unknown) == 3
    assert len(res.warning_examples["attribute_unknown"]) == 2
    assert any("2 records have question_type = 'unknown'" in m for m in res.warning_examples["attribute_unknown"])
    # The per-modality x question-type counts then say "unknown" instead of a wrong type.
    from medgr2.data.stats import dataset_stats

    cross = dataset_stats(res.records)["modality_question_type"]
    assert cross["unknown"] == {"Other Biological Attributes": 1}
    assert cross["US"] == {"unknown": 1} and cross["FP"]["unknown"] == 1


def test_medr1_split_filter_and_image_root(medr1_tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, expected = medr1_tree
    test = load_omnimedvqa(root, split="test")
    assert len(test.records) == expected["modality"]["splits"]["test"]
    # Filters run before the image check: the train item with a missing image is filtered, not skipped.
    assert test.filtered["split"] == expected["modality"]["splits"]["train"] + 1
    # Split files elsewhere, images under the OmniMedVQA root: image_root says where.
    elsewhere = tmp_path / "splits_only"
    shutil.copytree(root / "Splits", elsewhere / "Splits")
    without = load_omnimedvqa(elsewhere)
    assert not without.records and without.skipped["missing_image"] > 0
    with_root = load_omnimedvqa(elsewhere, image_root=root)
    assert len(with_root.records) == expected["modality"]["n_records"]


@pytest.mark.parametrize(
    ("problem", "question", "options"),
    [
        ("Which modality? A)CT, B)X-ray, C)MRI, D)US", "Which modality?", ["CT", "X-ray", "MRI", "US"]),
        ("Which organ?\nA) liver\nB) kidney\nC) lung", "Which organ?", ["liver", "kidney", "lung"]),
        ("Lesion? A)yes,B)no", "Lesion?", ["yes", "no"]),
        ("Tumor? (A) yes (B) no", "Tumor?", ["yes", "no"]),
        (
            "Pick one.\nOptions: A) CT; B) MR (Mag-netic Resonance Imaging)",
            "Pick one.",
            ["CT", "MR (Mag-netic Resonance Imaging)"],
        ),
        # A stray "A)" inside the question does not start the option block.
        ("Is type A) present? A)yes, B)no", "Is type A) present?", ["yes", "no"]),
        ("Describe the image.", "Describe the image.", []),
        ("Only A)one", "Only A)one", []),
    ],
)
def test_parse_problem(problem: str, question: str, options: list[str]) -> None:
    assert parse_problem(problem) == (question, options)


@pytest.mark.parametrize(
    ("solution", "letter"),
    [
        ("<answer> C </answer>", "C"),
        ("<answer>b</answer>", "B"),
        ("C", "C"),
        ("(D)", "D"),
        ("<answer> A) CT </answer>", "A"),
        ("<answer></answer>", None),
        ("I do not know", None),
        ("a lesion", None),
    ],
)
def test_parse_solution(solution: str, letter: str | None) -> None:
    assert parse_solution(solution) == letter
