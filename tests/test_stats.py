"""Record statistics: counts on hand-made records, on a datasets.Dataset (no image decoding), rendering."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
from fixtures_omnimedvqa import write_omnimedvqa_fixture

from medgr2.data import schema
from medgr2.data.omnimedvqa import load_omnimedvqa
from medgr2.data.stats import dataset_stats, format_stats


def _records() -> list[dict]:
    def rec(
        i: int, modality: str, qtype: str, options: list[str], answer: str, split: str, dataset: str
    ) -> dict:
        return schema.make_record(
            id=f"{dataset}/{i}",
            image=f"/nonexistent/{i}.png",
            question=f"q{i}?",
            options=options,
            answer=answer,
            modality=modality,
            question_type=qtype,
            dataset=dataset,
            split=split,
        )

    yn, four = ["yes", "no"], ["w", "x", "y", "z"]
    return [
        rec(0, "CT", "Disease Diagnosis", yn, "A", "train", "D1"),
        rec(1, "CT", "Disease Diagnosis", four, "D", "train", "D1"),
        rec(2, "CT", "Lesion Grading", four, "C", "test", "D1"),
        rec(3, "MRI", "Anatomy Identification", ["a", "b", "c"], "B", "val", "D2"),
        rec(4, "OCT", "Modality Recognition", yn, "B", "train", "D2"),
    ]


EXPECTED = {
    "total": 5,
    "modality_question_type": {
        "CT": {"Disease Diagnosis": 2, "Lesion Grading": 1},
        "MRI": {"Anatomy Identification": 1},
        "OCT": {"Modality Recognition": 1},
    },
    "modality": {"CT": 3, "MRI": 1, "OCT": 1},
    "question_type": {
        "Modality Recognition": 1,
        "Anatomy Identification": 1,
        "Disease Diagnosis": 2,
        "Lesion Grading": 1,
    },
    "option_count": {2: 2, 3: 1, 4: 2},
    "answer": {"A": 1, "B": 2, "C": 1, "D": 1},
    "split": {"train": 3, "val": 1, "test": 1},
    "dataset": {"D1": 3, "D2": 2},
}


def test_stats_on_dicts() -> None:
    stats = dataset_stats(_records())
    assert stats == EXPECTED
    # Canonical order (schema order), not insertion or alphabetical order.
    assert list(stats["question_type"]) == [
        "Modality Recognition",
        "Anatomy Identification",
        "Disease Diagnosis",
        "Lesion Grading",
    ]
    assert list(stats["split"]) == ["train", "val", "test"]
    json.dumps(stats)  # serialisable as is


def test_stats_on_dataset_do_not_decode_images() -> None:
    # Image paths that do not exist: touching the image column would raise.
    ds = schema.to_dataset(_records())
    assert isinstance(ds, datasets.Dataset)
    assert dataset_stats(ds) == EXPECTED


def test_stats_keep_unexpected_values() -> None:
    recs = _records()
    recs[0]["modality"] = "PET"
    stats = dataset_stats(recs)
    assert stats["modality"] == {"CT": 2, "MRI": 1, "OCT": 1, "PET": 1}
    assert dataset_stats([]) == {
        "total": 0,
        "modality_question_type": {},
        "modality": {},
        "question_type": {},
        "option_count": {},
        "answer": {},
        "split": {},
        "dataset": {},
    }


def test_format_stats() -> None:
    text = format_stats(
        dataset_stats(_records()),
        Counter({"missing_image": 3, "duplicate_id": 1}),
        examples={"missing_image": ["f.json item 2 (id D1/2): image file not found"]},
    )
    assert isinstance(text, str) and "\x1b[" not in text
    assert all(len(line) <= 120 for line in text.splitlines())
    for needle in (
        "Records: 5",
        "Modality x question type",
        "CT",
        "Disease Diagn.",
        "Splits",
        "train",
        "Options per question",
        "Answer letters",
        "Skipped: 4",
        "missing_image",
        "duplicate_id",
        "image file not found",
    ):
        assert needle in text, needle
    assert "Skipped" not in format_stats(dataset_stats(_records()))
    assert "warnings" not in format_stats(dataset_stats(_records()), Counter())
    assert "Records: 0" in format_stats(dataset_stats([]), Counter())


def test_format_stats_shows_load_warnings_apart_from_skips() -> None:
    text = format_stats(dataset_stats(_records()), Counter(), warnings=Counter({"non_utf8_json": 2}),
                        warning_examples={"non_utf8_json": ["QA/Latin.json: not UTF-8, decoded as cp1252"]})
    assert "Skipped: 0" in text
    assert "Loaded with warnings: 2" in text
    assert "non_utf8_json" in text and "decoded as cp1252" in text


def test_stats_of_loaded_fixture(tmp_path: Path) -> None:
    expected = write_omnimedvqa_fixture(tmp_path)
    res = load_omnimedvqa(tmp_path)
    stats = dataset_stats(res.records)
    assert stats["total"] == expected["n_records"]
    assert stats["dataset"] == expected["datasets"]
    assert stats["split"] == expected["splits"]
    assert stats["option_count"] == dict(
        sorted(Counter(e["n_options"] for e in expected["records"].values()).items())
    )
    text = format_stats(stats, res.skipped, examples=res.examples)
    for reason in expected["skipped"]:
        assert reason in text
