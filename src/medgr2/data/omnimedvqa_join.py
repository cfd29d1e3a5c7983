"""Filling the attribute a Med-R1 split file does not give: joined from the other tree or QA_information.

A Med-R1 file name gives the modality (``Splits/modality/``) *or* the question type
(``Splits/question_type/``). Both trees hold the same questions, so the missing one is looked up in the other
tree by image + problem text; failing that, in OmniMedVQA's raw ``QA_information`` (when the user points at
it) by image + question text. Where neither has it, the value stays :data:`~medgr2.data.schema.UNKNOWN`:
a keyword guess was right for only about half of the real items, and a wrong attribute silently corrupts every
per-modality / per-type table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medgr2.data.omnimedvqa_io import LoadResult, read_json_list
from medgr2.data.omnimedvqa_medr1 import AXES, file_attribute, join_key, tree_files
from medgr2.data.omnimedvqa_raw import RAW_QA_DIR, raw_candidates
from medgr2.data.schema import UNKNOWN, RecordError

__all__ = ["AttributeFiller", "QA_SOURCE"]

QA_SOURCE = "QA_information"
_CONFLICT = "<conflict>"  # one key, two different values: unusable, never a guess between them


def _put(index: dict[Any, str], key: Any, value: str) -> None:
    old = index.get(key)
    index[key] = value if old is None or old == value else _CONFLICT


def _tree_index(root: Path, axis: str) -> tuple[dict[tuple[str, str], str], int]:
    """join key -> the ``axis`` attribute named by the file holding it, over both splits; and the number of
    items that could not be indexed (unreadable file or item, unknown file name)."""
    index: dict[tuple[str, str], str] = {}
    scratch = LoadResult()  # the other tree's problems are not this load's skips; only their count is reported
    bad = 0
    for _, path in tree_files(root, axis):
        items, _ = read_json_list(path, path.name, scratch)
        if items is None:
            bad += 1
            continue
        try:
            value = file_attribute(path.stem, axis)
        except RecordError:
            bad += len(items)
            continue
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("image"), str) and isinstance(item.get("problem"), str):
                if value != UNKNOWN:
                    _put(index, join_key(item["image"], item["problem"]), value)
            else:
                bad += 1
    return index, bad


def _qa_index(qa_root: Path) -> tuple[dict[tuple[str, str], dict[str, str]], int]:
    """join key (image, question) -> {"modality": m, "question_type": q} from raw QA_information."""
    scratch = LoadResult()
    index: dict[str, dict[tuple[str, str], str]] = {a: {} for a in AXES}
    for rec, _, image_rel in raw_candidates(qa_root, scratch):
        key = join_key(image_rel, rec["question"])
        for a in AXES:
            _put(index[a], key, rec[a])
    keys = set(index["modality"]) | set(index["question_type"])
    merged = {k: {a: index[a][k] for a in AXES if k in index[a]} for k in keys}
    return merged, scratch.n_skipped


class AttributeFiller:
    """Sets the Med-R1 attribute a file name does not give, and says where every value came from.

    Args:
        root: the Med-R1 folder (holding ``Splits``).
        axis: the tree being read; the other tree, when present, is indexed once.
        qa_root: optional OmniMedVQA folder holding ``QA_information/Open-access`` (``data.qa_root``).
        result: the load result; indexing problems are counted once each under its warnings.
    """

    def __init__(self, root: Path, axis: str, qa_root: Path | None, result: LoadResult):
        self.other = "question_type" if axis == "modality" else "modality"
        self.tree: dict[tuple[str, str], str] = {}
        self.qa: dict[tuple[str, str], dict[str, str]] = {}
        if tree_files(root, self.other):
            self.tree, bad = _tree_index(root, self.other)
            if bad:
                result.warn("join_tree_unreadable", f"Splits/{self.other}: {bad} items or files could not be "
                            "indexed for the attribute join (see a load with that axis for the reasons)", count=bad)
        if qa_root is not None:
            if not (qa_root / RAW_QA_DIR).is_dir():
                raise FileNotFoundError(f"data.qa_root={qa_root}: expected {qa_root / RAW_QA_DIR} (raw OmniMedVQA)")
            self.qa, bad = _qa_index(qa_root)
            if bad:
                result.warn("join_qa_unusable", f"{RAW_QA_DIR}: {bad} items unusable for the attribute join",
                            count=bad)
        self.sources = [f"Splits/{self.other}" if self.tree else None, QA_SOURCE if qa_root is not None else None]

    def fill(self, rec: dict[str, Any]) -> None:
        """Fill ``rec``'s :data:`UNKNOWN` attributes in place; record each one's source in
        ``provenance["attributes"]`` and drop the join keys from the provenance."""
        prov = rec["provenance"]
        keys: Mapping[str, tuple[str, str]] = prov.pop("join")
        how: dict[str, str] = prov["attributes"]
        for field in AXES:
            if rec[field] != UNKNOWN:
                continue
            value, source = UNKNOWN, UNKNOWN
            if field == self.other:
                got = self.tree.get(tuple(keys["problem"]))
                if got not in (None, _CONFLICT):
                    value, source = got, f"Splits/{self.other}"
            if value == UNKNOWN:
                got = self.qa.get(tuple(keys["question"]), {}).get(field)
                if got not in (None, _CONFLICT):
                    value, source = got, QA_SOURCE
            rec[field] = value
            how[field] = source

