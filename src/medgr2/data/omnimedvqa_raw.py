"""OmniMedVQA's raw layout: ``root/QA_information/Open-access/<Dataset>.json`` -> candidate records.

Each file is a JSON list of objects with ``dataset, question_id, question_type, question, gt_answer,
image_path, option_A..option_D, modality_type`` (one real file says ``modality``). ``gt_answer`` is the option
*text*, turned into its letter by :func:`~medgr2.data.schema.option_index` (exact first, ignoring case only
when unique). There is no official split, so one is assigned by hashing the image path (:func:`hash_split`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medgr2.data.omnimedvqa_io import SOURCE, Candidate, LoadResult, read_json_list, text
from medgr2.data.schema import (
    LETTERS,
    RecordError,
    canonical_modality,
    canonical_question_type,
    option_index,
)

__all__ = ["RAW_QA_DIR", "RAW_SPLITS", "RAW_SPLIT_FRACTIONS", "hash_split", "raw_candidates", "raw_item"]

RAW_QA_DIR = Path("QA_information") / "Open-access"

# Assigned split fractions (train, val, test); the rest of [0, 1) after train+val is test.
RAW_SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
RAW_SPLITS: tuple[str, ...] = ("train", "val", "test")

_RAW_REQUIRED = (
    "question_id",
    "question_type",
    "question",
    "gt_answer",
    "image_path",
    "option_A",
    "option_B",
)
_EXTRA_OPTION = re.compile(r"option_[E-Z]")  # raw items have option_A..option_D


def hash_split(key: str, fractions: tuple[float, float, float] = RAW_SPLIT_FRACTIONS) -> str:
    """Deterministic train/val/test assignment of ``key`` (stable across runs, machines, Python versions).

    Uses SHA-256 rather than ``hash()`` because the latter is salted per process.
    """
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if h < fractions[0]:
        return "train"
    if h < fractions[0] + fractions[1]:
        return "val"
    return "test"


def raw_candidates(root: Path, result: LoadResult) -> Iterator[Candidate]:
    """Every item of every ``<Dataset>.json`` under ``root``: a candidate, or one counted skip."""
    qa_dir = root / RAW_QA_DIR
    if not qa_dir.is_dir():
        raise FileNotFoundError(f"raw OmniMedVQA layout expects {qa_dir} (a folder of <Dataset>.json files)")
    files = sorted(qa_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no <Dataset>.json files in {qa_dir}")
    for path in files:
        rel = path.relative_to(root).as_posix()
        items, encoding = read_json_list(path, rel, result)
        if items is None:
            continue
        for i, item in enumerate(items):
            where = f"{rel} item {i}"
            if not isinstance(item, dict):
                result.skip("malformed_record", f"{where}: expected a JSON object, got {type(item).__name__}")
                continue
            try:
                cand = raw_item(item, path, rel, i)
            except RecordError as e:  # the message already names file, item and id
                result.skip(e.reason, str(e))
                continue
            if encoding is not None:
                cand[0]["provenance"]["encoding"] = encoding
            yield cand


def raw_item(item: dict[str, Any], path: Path, rel: str, index: int) -> Candidate:
    """One raw QA object -> candidate, or :class:`RecordError`."""
    qid = item.get("question_id")
    where = f"{rel} item {index}" + (f" (question_id {qid})" if qid is not None else "")
    # None and blank strings both count as missing: either way there is nothing to build from.
    missing = [k for k in _RAW_REQUIRED if not text(item.get(k))]
    # Most files say modality_type, at least one says modality.
    modality_raw = item.get("modality_type", item.get("modality"))
    if not text(modality_raw):
        missing.append("modality_type")
    if missing:
        raise RecordError("missing_field", f"{where}: missing required key(s) {missing}")
    extra = sorted(k for k in item if _EXTRA_OPTION.fullmatch(str(k)) and text(item[k]))
    if extra:  # a fifth option would otherwise be dropped without a word
        raise RecordError(
            "bad_option_count",
            f"{where}: more than {len(LETTERS)} options (extra keys {extra}); the schema allows {len(LETTERS)}",
        )
    # The file is named after its data set; fall back to it when an item omits "dataset".
    dataset = text(item.get("dataset")) or path.stem
    rid = f"{dataset}/{text(qid)}"
    where = f"{rel} item {index} (id {rid})"
    try:
        modality = canonical_modality(str(modality_raw))
        question_type = canonical_question_type(str(item["question_type"]))
    except RecordError as e:
        raise RecordError(e.reason, f"{where}: {e}") from None
    # Options in A..D order; absent or empty ones are dropped (2-option items leave C/D out or "").
    options = [t for t in (text(item.get(f"option_{ch}")) for ch in LETTERS) if t]
    k = option_index(text(item["gt_answer"]), options, where=f"{where}: gt_answer")
    image_rel = text(item["image_path"])
    rec = {
        "id": rid,
        "question": text(item["question"]),
        "options": options,
        "answer": LETTERS[k],
        "answer_text": options[k],
        "rationale": "",
        "modality": modality,
        "question_type": question_type,
        "dataset": dataset,
        # By image, not by question: questions about one image must not straddle train and test.
        "split": hash_split(image_rel),
        "provenance": {
            "source": SOURCE,
            "layout": "raw",
            "file": rel,
            "index": index,
            "question_id": qid,
            "image_path": image_rel,
        },
    }
    return rec, where, image_rel
