"""The one VQA record schema shared by every stage (SynthMed, OmniMedVQA, generated candidates).

A record is a plain dict with the keys of :data:`FEATURES`; on disk it is a Hugging Face ``datasets``
Arrow table with exactly these features (plus optional extra columns such as ``score``). Images are
stored as encoded bytes by ``datasets.Image`` so a saved dataset is self-contained.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import datasets

LETTERS = "ABCD"
MIN_OPTIONS, MAX_OPTIONS = 2, 4

MODALITIES: tuple[str, ...] = ("CT", "MRI", "X-Ray", "US", "Der", "FP", "OCT", "Micro")
QUESTION_TYPES: tuple[str, ...] = (
    "Modality Recognition",
    "Anatomy Identification",
    "Disease Diagnosis",
    "Lesion Grading",
    "Other Biological Attributes",
)
SPLITS: tuple[str, ...] = ("pretrain", "train", "val", "test")
# The value of a modality / question type that no source gives (a Med-R1 item seen in one tree only):
# marked, counted and shown as its own row, never replaced by a guess.
UNKNOWN = "unknown"

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "options": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("string"),  # option letter, "A".."D"
        "answer_text": datasets.Value("string"),
        "rationale": datasets.Value("string"),
        "modality": datasets.Value("string"),  # one of MODALITIES
        "question_type": datasets.Value("string"),  # one of QUESTION_TYPES
        "dataset": datasets.Value("string"),  # source data set name
        "split": datasets.Value("string"),
        "provenance": datasets.Value("string"),  # JSON object: who made this record and how
    }
)
FIELDS: tuple[str, ...] = tuple(FEATURES.keys())

# Raw modality strings as they appear in OmniMedVQA / Med-R1 (typos included), lower-cased prefixes.
_MODALITY_ALIASES: dict[str, str] = {
    "ct": "CT",
    "computed tomography": "CT",
    "mr": "MRI",
    "mri": "MRI",
    "magnetic resonance": "MRI",
    "x-ray": "X-Ray",
    "xray": "X-Ray",
    "x ray": "X-Ray",
    "ultrasound": "US",
    "us": "US",
    "dermoscopy": "Der",
    "der": "Der",
    "fundus photography": "FP",
    "fundus": "FP",
    "fp": "FP",
    "oct": "OCT",
    "optical coherence tomography": "OCT",
    "microscopy images": "Micro",
    "microscopy": "Micro",
    "micro": "Micro",
}

_QTYPE_ALIASES: dict[str, str] = {q.lower(): q for q in QUESTION_TYPES}
_QTYPE_ALIASES.update(
    {
        "modality": "Modality Recognition",
        "anatomy": "Anatomy Identification",
        "diagnosis": "Disease Diagnosis",
        "grading": "Lesion Grading",
        "lesion": "Lesion Grading",
        "other": "Other Biological Attributes",
        "attributes": "Other Biological Attributes",
    }
)


class RecordError(ValueError):
    """A record that cannot be used; ``reason`` is a short machine-readable key used in skip counts."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def canonical_modality(raw: str) -> str:
    """Map a raw modality string (``"MR (Mag-netic Resonance Imaging)"``, ``"ultrasound"``…) to its
    canonical name, or raise :class:`RecordError` with reason ``unknown_modality``.

    >>> canonical_modality("OCT (Optical Coherence Tomography")
    'OCT'
    >>> canonical_modality("MR (Mag-netic Resonance Imaging)")
    'MRI'
    """
    if raw in MODALITIES:
        return raw
    key = re.sub(r"\s+", " ", str(raw).strip().lower())
    if key in _MODALITY_ALIASES:
        return _MODALITY_ALIASES[key]
    # "CT(Computed Tomography)" / "MR (Mag-netic ..." : the part before the parenthesis decides.
    head = key.split("(")[0].strip()
    if head in _MODALITY_ALIASES:
        return _MODALITY_ALIASES[head]
    raise RecordError("unknown_modality", f"unknown modality string {raw!r}; known: {', '.join(MODALITIES)}")


def canonical_question_type(raw: str) -> str:
    """Map a question-type string to one of :data:`QUESTION_TYPES` (case-insensitive)."""
    key = str(raw).strip().lower()
    if key in _QTYPE_ALIASES:
        return _QTYPE_ALIASES[key]
    raise RecordError(
        "unknown_question_type", f"unknown question type {raw!r}; known: {', '.join(QUESTION_TYPES)}"
    )


def letter(index: int) -> str:
    """Option letter for a 0-based option index."""
    return LETTERS[index]


def index_of(answer_letter: str) -> int:
    """0-based option index for a letter ("A" -> 0)."""
    return LETTERS.index(answer_letter.strip().upper())


def _option_key(option: str) -> str:
    return option.strip().casefold()


def repeated_options(options: Iterable[str]) -> list[list[int]]:
    """Groups (0-based indices, two or more each) of options that repeat up to case and surrounding spaces.

    Real OmniMedVQA items do this ("Thyroid Gland" / "Thyroid gland", "SPECT" / "SPECT"); such an item is
    still a fair question when the answer is not one of the repeats.

    >>> repeated_options(["Thyroid Gland", "Liver", "Thyroid gland"])
    [[0, 2]]
    >>> repeated_options(["CT", "MRI"])
    []
    """
    groups: dict[str, list[int]] = {}
    for i, opt in enumerate(options):
        groups.setdefault(_option_key(opt), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def option_index(answer: str, options: list[str], where: str = "answer") -> int:
    """0-based index of the option whose text is ``answer``: exact (after stripping spaces) first; failing
    that, ignoring case, but only when exactly one option matches.

    Raises :class:`RecordError`: ``answer_not_in_options`` (no option matches), ``ambiguous_answer`` (several
    options match ignoring case and none exactly, so which letter is right cannot be told), or
    ``answer_is_repeated_option`` (the answer is one of two identical options). ``where`` starts the message.

    >>> option_index("Brain", ["brain", "Brain", "Liver"])
    1
    >>> option_index(" liver ", ["Brain", "Liver"])
    1
    """
    text = answer.strip()
    exact = [k for k, opt in enumerate(options) if opt.strip() == text]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise RecordError("answer_is_repeated_option",
                          f"{where}: answer {answer!r} is option {len(exact)} times in {options}")
    folded = [k for k, opt in enumerate(options) if _option_key(opt) == text.casefold()]
    if len(folded) == 1:
        return folded[0]
    if folded:
        raise RecordError("ambiguous_answer", f"{where}: answer {answer!r} matches options "
                          f"{[options[k] for k in folded]} ignoring case and none exactly; letter unknown")
    raise RecordError("answer_not_in_options", f"{where}: answer {answer!r} is not one of the options {options}")


def validate_record(rec: Mapping[str, Any]) -> None:
    """Raise :class:`RecordError` naming the first problem of a record, or return None if it is usable.

    Checks the fields every stage relies on: text fields present and non-empty, 2–4 options, the answer
    letter inside the options and consistent with ``answer_text``, the answer not one of options that repeat
    up to case (other options may repeat: see :func:`repeated_options`), canonical modality and question
    type (or :data:`UNKNOWN`), an image.
    """
    rid = rec.get("id", "<no id>")
    for key in ("id", "question", "answer", "modality", "question_type"):
        if not isinstance(rec.get(key), str) or not rec.get(key, "").strip():
            raise RecordError("missing_field", f"record {rid}: field {key!r} is missing or empty")
    if rec.get("image") is None:
        raise RecordError("missing_image", f"record {rid}: no image")
    options = rec.get("options")
    if not isinstance(options, list | tuple) or not all(isinstance(o, str) and o.strip() for o in options):
        raise RecordError("bad_options", f"record {rid}: options must be a list of non-empty strings")
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        raise RecordError(
            "bad_option_count", f"record {rid}: {len(options)} options (need {MIN_OPTIONS}–{MAX_OPTIONS})"
        )
    ans = rec["answer"].strip().upper()
    if ans not in LETTERS[: len(options)]:
        raise RecordError(
            "answer_not_in_options", f"record {rid}: answer {rec['answer']!r} is not one of the options"
        )
    if any(index_of(ans) in group for group in repeated_options(options)):
        # A model cannot tell "Thyroid Gland" from "Thyroid gland": the item has two right answers.
        raise RecordError("answer_is_repeated_option",
                          f"record {rid}: the answer {ans} ({options[index_of(ans)]!r}) is repeated in {options}")
    text = rec.get("answer_text")
    if text and text.strip().lower() != options[index_of(ans)].strip().lower():
        raise RecordError(
            "answer_text_mismatch",
            f"record {rid}: answer {ans} is {options[index_of(ans)]!r} but answer_text is {text!r}",
        )
    if rec["modality"] not in MODALITIES and rec["modality"] != UNKNOWN:
        raise RecordError("unknown_modality", f"record {rid}: modality {rec['modality']!r} is not canonical")
    if rec["question_type"] not in QUESTION_TYPES and rec["question_type"] != UNKNOWN:
        raise RecordError(
            "unknown_question_type", f"record {rid}: question type {rec['question_type']!r} is not canonical"
        )


def make_record(**kw: Any) -> dict[str, Any]:
    """Build a record dict with every schema field (defaults: empty strings, provenance ``{}``).

    ``provenance`` may be given as a dict; it is stored as sorted JSON so records hash stably.
    """
    rec: dict[str, Any] = {k: "" for k in FIELDS}
    rec["options"] = []
    rec["image"] = None
    rec["provenance"] = "{}"
    unknown = set(kw) - set(FIELDS)
    if unknown:
        raise KeyError(f"unknown record fields: {sorted(unknown)}")
    rec.update(kw)
    if isinstance(rec["provenance"], dict):
        rec["provenance"] = json.dumps(rec["provenance"], sort_keys=True)
    rec["options"] = list(rec["options"])
    if not rec["answer_text"] and rec["answer"] and rec["options"]:
        rec["answer_text"] = rec["options"][index_of(rec["answer"])]
    return rec


def provenance(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance of a record as a dict."""
    raw = rec.get("provenance") or "{}"
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def to_dataset(records: Iterable[Mapping[str, Any]], extra_features: Mapping[str, Any] | None = None) -> datasets.Dataset:
    """Records -> an Arrow-backed ``datasets.Dataset`` with the canonical features (+ ``extra_features``)."""
    feats = dict(FEATURES)
    if extra_features:
        feats.update(extra_features)
    features = datasets.Features(feats)
    cols: dict[str, list[Any]] = {k: [] for k in features}
    for rec in records:
        for k in features:
            cols[k].append(rec.get(k))
    return datasets.Dataset.from_dict(cols, features=features)
