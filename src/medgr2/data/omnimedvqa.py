"""OmniMedVQA loader: raw ``QA_information`` files or the Med-R1 ``Splits`` trees -> schema records.

Two on-disk layouts are understood (see ``DESIGN.md`` §4):

``raw``
    ``root/QA_information/Open-access/<Dataset>.json``: a JSON list of objects with ``dataset,
    question_id, question_type, question, gt_answer, image_path, option_A..option_D, modality_type``
    (some files say ``modality``). ``gt_answer`` is the option *text*; ``image_path`` is relative to
    ``root``. There is no official split, so one is assigned by hashing (see :func:`hash_split`).

``medr1``
    ``root/Splits/{modality,question_type}/{train,test}/<Name>_{train,test}.json``: lists of
    ``{"image", "problem", "solution"}`` with the options inline in ``problem`` (``A)CT, B)MRI``) and
    the answer letter in ``solution`` (``<answer> C </answer>``). Only one attribute (modality *or*
    question type) is given, by the file name; see :func:`load_omnimedvqa` for how the other is set.

The loader never raises on one bad record: every item that does not become a record is counted in
:attr:`LoadResult.skipped` under a short reason, with the first few messages (naming file and item)
kept in :attr:`LoadResult.examples`. A JSON file in a legacy 8-bit encoding (not UTF-8/16/32) is read item
by item all the same, and counted once in :attr:`LoadResult.warnings` (``non_utf8_json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from medgr2.data.schema import (
    LETTERS,
    RecordError,
    canonical_modality,
    canonical_question_type,
    make_record,
    validate_record,
)

__all__ = [
    "FALLBACK_MODALITY",
    "FALLBACK_QUESTION_TYPE",
    "LAYOUTS",
    "LoadResult",
    "RAW_SPLIT_FRACTIONS",
    "detect_layout",
    "guess_modality",
    "guess_question_type",
    "hash_split",
    "load_omnimedvqa",
    "parse_problem",
    "parse_solution",
]

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("raw", "medr1")
AXES: tuple[str, ...] = ("modality", "question_type")
SOURCE = "omnimedvqa"
MAX_EXAMPLES = 5  # messages kept per skip reason: enough to diagnose, small enough to print

RAW_QA_DIR = Path("QA_information") / "Open-access"
MEDR1_DIR = Path("Splits")

# Raw layout: assigned split fractions (train, val, test); the rest of [0, 1) after train+val is test.
RAW_SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
RAW_SPLITS: tuple[str, ...] = ("train", "val", "test")
MEDR1_SPLITS: tuple[str, ...] = ("train", "test")

# Fallbacks for the Med-R1 axis that a tree does not give, used only when no keyword matches.
# "Other Biological Attributes" is the catch-all question type; MRI is the largest modality of the
# open-access OmniMedVQA, so it is the least-wrong blind guess. Provenance says when they were used.
FALLBACK_QUESTION_TYPE = "Other Biological Attributes"
FALLBACK_MODALITY = "MRI"

_RAW_REQUIRED = (
    "question_id",
    "question_type",
    "question",
    "gt_answer",
    "image_path",
    "option_A",
    "option_B",
)

# Med-R1 names its cross-task files by abbreviation in places (AI, DD, LG, MR, OBA).
_QTYPE_FILE_ALIASES: dict[str, str] = {
    "ai": "Anatomy Identification",
    "dd": "Disease Diagnosis",
    "lg": "Lesion Grading",
    "mr": "Modality Recognition",
    "oba": "Other Biological Attributes",
    "biological attribute analysis": "Other Biological Attributes",
    "other biological attribute": "Other Biological Attributes",
}

# Question-type keywords, tried in this order: grading before diagnosis because "what stage of the
# disease" is a grading question although it names a disease.
_QTYPE_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "Modality Recognition",
        re.compile(
            r"\bmodalit|\bimaging (?:technique|method|type|modality)|\b(?:type|kind|form) of (?:imaging|scan|image)"
            r"|\bwhat (?:scan|imaging)\b",
            re.I,
        ),
    ),
    ("Lesion Grading", re.compile(r"\bgrad(?:e|ing)\b|\bstag(?:e|ing)\b|\bseverity\b|\bhow severe\b", re.I)),
    (
        "Anatomy Identification",
        re.compile(
            r"\borgan\b|\banatom|\bbody part\b|\bwhich part\b|\bstructure\b|\bregion of the body\b", re.I
        ),
    ),
    (
        "Disease Diagnosis",
        re.compile(
            r"\bdiagnos|\bdisease|\babnormal|\bcondition\b|\bpatholog|\bfinding|\blesion|\btumou?r|\bcancer"
            r"|\bnormal\b",
            re.I,
        ),
    ),
)

# Modality keywords over question text, dataset name and image path. Acronyms are matched
# case-sensitively so English words ("us", "act", "mr") and lower-case path fragments do not count.
_MODALITY_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("CT", re.compile(r"\bCT\b|(?i:computed tomography)")),
    ("MRI", re.compile(r"\bMRI?\b|(?i:magnetic resonance)|\bT[12][- ]?(?i:weighted)")),
    ("X-Ray", re.compile(r"(?i:x-?ray|radiograph)")),
    ("US", re.compile(r"\bUS\b|(?i:ultrasound|sonograph|echocardiograph)")),
    ("Der", re.compile(r"(?i:derm[ao]scop|\bderm)")),
    ("FP", re.compile(r"(?i:fundus)")),
    ("OCT", re.compile(r"\bOCT\b|(?i:optical coherence)")),
    ("Micro", re.compile(r"(?i:microscop|histolog|histopatholog|cytolog)")),
)

# An option marker: "A)" or "(A)" at the start or after whitespace / punctuation.
_OPTION_MARKER = re.compile(r"(?:^|(?<=[\s,;:.?!]))\(?([A-Z])\)")
_OPTIONS_LABEL = re.compile(r"(?:options|choices)\s*:?\s*$", re.I)
_MARKER_LETTERS = "ABCDEFGHIJ"
_EXTRA_OPTION = re.compile(r"option_[E-Z]")  # raw items have option_A..option_D
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.I | re.S)


@dataclass
class LoadResult:
    """What :func:`load_omnimedvqa` produced.

    Attributes:
        records: schema records (``image`` is an absolute path string), validated.
        skipped: reason -> number of items that did not become records because they are unusable.
        examples: reason -> the first :data:`MAX_EXAMPLES` messages, each naming file and item.
        layout: the layout actually read (``"raw"`` or ``"medr1"``).
        filtered: reason (``split``/``modality``/``question_type``) -> items left out on purpose by
            the caller's filters; kept apart from ``skipped`` because they are not data problems.
        truncated: True when ``limit`` stopped the scan early (later items were not examined).
        warnings: reason -> number of files (or items) loaded despite a problem worth a look, e.g.
            ``non_utf8_json`` (a file decoded from a legacy 8-bit encoding); not skips: their items are
            in ``records`` or ``skipped`` like any other's.
        warning_examples: reason -> the first :data:`MAX_EXAMPLES` warning messages (also logged).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    layout: str = ""
    filtered: Counter[str] = field(default_factory=Counter)
    truncated: bool = False
    warnings: Counter[str] = field(default_factory=Counter)
    warning_examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, message: str) -> None:
        """Count one skipped item under ``reason`` and keep ``message`` if it is among the first few."""
        self.skipped[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(message)

    def warn(self, reason: str, message: str) -> None:
        """Count one loaded-with-a-caveat file or item under ``reason``, keep ``message``, and log it."""
        self.warnings[reason] += 1
        kept = self.warning_examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(message)
        log.warning("OmniMedVQA: %s", message)

    @property
    def n_skipped(self) -> int:
        """Total number of skipped items."""
        return sum(self.skipped.values())


class _Filters:
    """The caller's split / modality / question-type selection, canonicalised once."""

    def __init__(
        self, split: str | None, modalities: Iterable[str] | None, question_types: Iterable[str] | None
    ):
        self.split = split
        self.modalities = _canonical_set(modalities, canonical_modality, "modalities")
        self.question_types = _canonical_set(question_types, canonical_question_type, "question_types")

    def reject(self, split: str, modality: str, question_type: str) -> str | None:
        """The filter that excludes this item, or None if it is kept."""
        if self.split is not None and split != self.split:
            return "split"
        if self.modalities is not None and modality not in self.modalities:
            return "modality"
        if self.question_types is not None and question_type not in self.question_types:
            return "question_type"
        return None


def _canonical_set(
    values: Iterable[str] | None, canon: Callable[[str], str], name: str
) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):  # a single name is a common slip; treat it as a one-element list
        values = [values]
    out = set()
    for v in values:
        try:
            out.add(canon(v))
        except RecordError as e:
            raise ValueError(f"{name}: {e}") from None
    return frozenset(out)


class _ImageChecker:
    """Checks image files once each (OmniMedVQA reuses an image across several questions)."""

    def __init__(self, verify: bool):
        self.verify = verify
        self._cache: dict[Path, tuple[str, str] | None] = {}

    def problem(self, path: Path) -> tuple[str, str] | None:
        """``(reason, detail)`` if the image cannot be used, else None."""
        if path not in self._cache:
            self._cache[path] = self._check(path)
        return self._cache[path]

    def _check(self, path: Path) -> tuple[str, str] | None:
        if not path.is_file():
            return "missing_image", f"image file not found: {path}"
        try:
            size = path.stat().st_size
        except OSError as e:
            return "unreadable_image", f"cannot stat image {path}: {e}"
        if size == 0:
            return "unreadable_image", f"image file is empty (0 bytes): {path}"
        try:
            with Image.open(path) as im:
                fmt = im.format
                if self.verify:
                    # verify() walks the file's structure without decoding pixels: cheap, and catches
                    # truncated or corrupt files that would only fail later inside a training step.
                    im.verify()
            if self.verify and fmt == "JPEG" and not _ends_with_jpeg_eoi(path):
                # PIL's verify() checks nothing for JPEG: a truncated file passes it and fails later, in a
                # training step. Files not ending in the end-of-image marker are decoded (at 1/8 scale).
                with Image.open(path) as im:
                    im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                    im.load()
        except Image.DecompressionBombError as e:
            return "unreadable_image", f"image too large (decompression bomb guard): {path}: {e}"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            return "unreadable_image", f"image cannot be read by PIL: {path}: {type(e).__name__}: {e}"
        return None


def _ends_with_jpeg_eoi(path: Path) -> bool:
    """True when the file ends with JPEG's end-of-image marker (trailing NUL padding allowed)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        tail = f.read().rstrip(b"\x00")
    return tail.endswith(b"\xff\xd9")


def detect_layout(root: str | Path) -> str:
    """Return ``"raw"`` or ``"medr1"`` for an OmniMedVQA root, or raise :class:`FileNotFoundError`."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"OmniMedVQA root does not exist: {root}")
    if not root.is_dir():
        raise FileNotFoundError(f"OmniMedVQA root is not a directory: {root}")
    if (root / "QA_information").is_dir():
        return "raw"
    if (root / MEDR1_DIR).is_dir():
        return "medr1"
    raise FileNotFoundError(
        f"no OmniMedVQA data under {root}: expected either the raw layout "
        f"({RAW_QA_DIR}/<Dataset>.json) or the Med-R1 layout ({MEDR1_DIR}/{{modality,question_type}}/"
        f"{{train,test}}/<Name>_{{train,test}}.json)"
    )


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


def load_omnimedvqa(
    root: str | Path,
    *,
    layout: str = "auto",
    split: str | None = None,
    modalities: Iterable[str] | None = None,
    question_types: Iterable[str] | None = None,
    limit: int | None = None,
    axis: str = "modality",
    image_root: str | Path | None = None,
    verify_images: bool = True,
) -> LoadResult:
    """Load OmniMedVQA as validated schema records, counting (never raising on) unusable items.

    Args:
        root: the OmniMedVQA folder (holding ``QA_information`` and ``Images``) or a Med-R1 folder
            (holding ``Splits``).
        layout: ``"raw"``, ``"medr1"`` or ``"auto"`` (raw if ``QA_information`` exists, else medr1 if
            ``Splits`` exists, else :class:`FileNotFoundError`).
        split: keep only this split; None keeps all. Raw layout: ``train``/``val``/``test`` assigned by
            :func:`hash_split` of the image path (80/10/10), so all questions about one image share a
            split and no image leaks between train and test. Med-R1 layout: ``train``/``test`` from
            the folder.
        modalities, question_types: keep only these (any alias accepted, e.g. ``"MR"``); items left
            out are counted in :attr:`LoadResult.filtered`.
        limit: stop after this many records (the rest of the data is not scanned).

    Filters run before the duplicate-id and image checks (opening ~82k images is the slow part), so
    ``skipped`` counts those problems only among the items that the filters keep.
        axis: Med-R1 layout only: which tree to read, ``"modality"`` (cross-modality protocol) or
            ``"question_type"`` (cross-task protocol).
        image_root: folder that image paths are relative to (default ``root``). Med-R1 split files
            refer to OmniMedVQA's ``Images/`` folder, which may live elsewhere.
        verify_images: run PIL ``verify()`` on each image (default). False only checks that the file
            exists, is non-empty and has a recognised image header.

    Med-R1 gives one attribute per tree, by file name; the schema needs both canonical, so the other
    one is a best guess and provenance says so: ``provenance["known_axis"]`` is the trusted one and
    ``provenance["guessed"]`` maps the guessed field to how it was set:

    * modality tree -> ``question_type`` guessed from keywords in the question
      (:func:`guess_question_type`), else :data:`FALLBACK_QUESTION_TYPE` (``"fallback"``);
    * question-type tree -> ``modality`` from the answer text of modality-recognition questions, else
      keywords in question / dataset name / image path (:func:`guess_modality`), else
      :data:`FALLBACK_MODALITY`.

    Use only the known axis for cross-modality / cross-task protocols.

    Skip reasons: ``missing_field``, ``malformed_record``, ``malformed_json`` (once per file: not JSON, or
    not a list; a file that is JSON in a legacy 8-bit encoding is read, item by item, and counted under
    :attr:`LoadResult.warnings` ``non_utf8_json`` instead),
    ``unknown_modality``, ``unknown_question_type``, ``answer_not_in_options``, ``duplicate_id`` (the
    first accepted record with an id wins), ``missing_image``, ``unreadable_image`` (also truncated
    JPEGs and images past PIL's decompression-bomb limit), ``bad_option_count`` (more than 4 options),
    Med-R1 only ``unparseable_options`` / ``unparseable_answer``, plus any :class:`RecordError` reason raised by
    :func:`~medgr2.data.schema.validate_record`.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds neither layout.
        ValueError: bad ``layout``, ``split``, ``axis``, filter value or ``limit``.
    """
    root = Path(root).expanduser().absolute()
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout must be 'auto', 'raw' or 'medr1', got {layout!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    used = detect_layout(root) if layout == "auto" else layout
    if not root.is_dir():
        raise FileNotFoundError(f"OmniMedVQA root does not exist or is not a directory: {root}")
    allowed = RAW_SPLITS if used == "raw" else MEDR1_SPLITS
    if split is not None and split not in allowed:
        raise ValueError(
            f"split {split!r} does not exist in the {used} layout; choose one of {allowed} or None"
        )
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    filters = _Filters(split, modalities, question_types)
    images = _ImageChecker(verify_images)
    img_root = Path(image_root).expanduser().absolute() if image_root is not None else root
    result = LoadResult(layout=used)
    seen: set[str] = set()

    if used == "raw":
        candidates = _raw_candidates(root, result)
    else:
        candidates = _medr1_candidates(root, axis, result)

    for cand in candidates:
        if limit is not None and len(result.records) >= limit:
            result.truncated = True
            break
        rec, where, image_rel = cand
        why = filters.reject(rec["split"], rec["modality"], rec["question_type"])
        if why is not None:
            result.filtered[why] += 1
            continue
        if rec["id"] in seen:
            result.skip("duplicate_id", f"{where}: duplicate id {rec['id']!r} (the first one is kept)")
            continue
        image_path = Path(image_rel) if Path(image_rel).is_absolute() else img_root / image_rel
        problem = images.problem(image_path)
        if problem is not None:
            result.skip(problem[0], f"{where}: {problem[1]}")
            continue
        rec = make_record(**{**rec, "image": str(image_path)})
        try:
            validate_record(rec)
        except RecordError as e:
            result.skip(e.reason, f"{where}: {e}")
            continue
        seen.add(rec["id"])
        result.records.append(rec)
    return result


# A candidate: record fields (no image yet), "file item N (id X)" for messages, image path as given.
_Candidate = tuple[dict[str, Any], str, str]


def _decode_json(raw: bytes) -> tuple[Any, str | None, UnicodeDecodeError | None]:
    """``(data, legacy encoding or None, the UTF-8 error)`` of a JSON file's bytes.

    ``json.loads`` of bytes reads UTF-8 (with or without a byte-order mark), UTF-16 and UTF-32. A file in none
    of them is almost always an 8-bit legacy encoding: Windows tools write cp1252 for European text, whose
    printable range is a superset of Latin-1's; the 5 byte values cp1252 leaves undefined fall back to Latin-1,
    which decodes every byte. JSON's structure (brackets, keys, numbers) is ASCII in all of them, so every item
    parses exactly; only non-ASCII characters in its strings depend on the guess. Raises
    :class:`json.JSONDecodeError` for text that is not JSON.
    """
    try:
        return json.loads(raw), None, None
    except UnicodeDecodeError as err:
        utf8_error = err
    for encoding in ("cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        return json.loads(text), encoding, utf8_error
    raise AssertionError("unreachable: latin-1 decodes every byte")  # pragma: no cover


def _non_ascii_items(items: list[Any]) -> int:
    """Items holding a non-ASCII character anywhere (the ones an encoding guess can change)."""
    return sum(not json.dumps(item, ensure_ascii=False).isascii() for item in items)


def _read_json_list(path: Path, rel: str, result: LoadResult) -> tuple[list[Any] | None, str | None]:
    """``(the JSON list in path, legacy encoding or None)``; ``(None, None)`` after counting ``malformed_json``
    once for the file.

    A file that is not UTF-8/16/32 is decoded as cp1252 (Latin-1 where cp1252 has no character, see
    :func:`_decode_json`) and its items are handled one by one like any other's, so its good items load; the
    file is counted once under :attr:`LoadResult.warnings` ``non_utf8_json`` with a message naming it, the
    encoding used and how many items hold non-ASCII text (which may be misread if the guess is wrong), and its
    records say ``provenance["encoding"]``.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        result.skip("malformed_json", f"{rel}: cannot be read ({e}); the whole file is skipped")
        return None, None
    try:
        data, encoding, utf8_error = _decode_json(raw)
    except json.JSONDecodeError as e:
        result.skip("malformed_json", f"{rel}: not valid JSON ({e}); the whole file is skipped")
        return None, None
    if not isinstance(data, list):
        result.skip(
            "malformed_json", f"{rel}: top level is {type(data).__name__}, expected a list; file skipped"
        )
        return None, None
    if encoding is not None:
        n_text = _non_ascii_items(data)
        result.warn(
            "non_utf8_json",
            f"{rel}: not UTF-8 ({utf8_error.reason} at byte {utf8_error.start}); decoded as {encoding}: "
            f"{len(data)} items read one by one, {n_text} of them with non-ASCII text that is right only if the "
            f"file really is {encoding} (re-save it as UTF-8 to be sure)",
        )
    return data, encoding


def _text(value: Any) -> str:
    """Option / answer values as stripped text (a few raw options are numbers)."""
    if value is None:
        return ""
    return str(value).strip()


def _raw_candidates(root: Path, result: LoadResult) -> Iterator[_Candidate]:
    qa_dir = root / RAW_QA_DIR
    if not qa_dir.is_dir():
        raise FileNotFoundError(f"raw OmniMedVQA layout expects {qa_dir} (a folder of <Dataset>.json files)")
    files = sorted(qa_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no <Dataset>.json files in {qa_dir}")
    for path in files:
        rel = path.relative_to(root).as_posix()
        items, encoding = _read_json_list(path, rel, result)
        if items is None:
            continue
        for i, item in enumerate(items):
            where = f"{rel} item {i}"
            if not isinstance(item, dict):
                result.skip("malformed_record", f"{where}: expected a JSON object, got {type(item).__name__}")
                continue
            try:
                cand = _raw_item(item, path, rel, i)
            except RecordError as e:  # the message already names file, item and id
                result.skip(e.reason, str(e))
                continue
            if encoding is not None:
                cand[0]["provenance"]["encoding"] = encoding
            yield cand


def _raw_item(item: dict[str, Any], path: Path, rel: str, index: int) -> _Candidate:
    """One raw QA object -> candidate, or :class:`RecordError`."""
    qid = item.get("question_id")
    where = f"{rel} item {index}" + (f" (question_id {qid})" if qid is not None else "")
    # None and blank strings both count as missing: either way there is nothing to build from.
    missing = [k for k in _RAW_REQUIRED if not _text(item.get(k))]
    # Most files say modality_type, at least one says modality.
    modality_raw = item.get("modality_type", item.get("modality"))
    if not _text(modality_raw):
        missing.append("modality_type")
    if missing:
        raise RecordError("missing_field", f"{where}: missing required key(s) {missing}")
    extra = sorted(k for k in item if _EXTRA_OPTION.fullmatch(str(k)) and _text(item[k]))
    if extra:  # a fifth option would otherwise be dropped without a word
        raise RecordError(
            "bad_option_count",
            f"{where}: more than {len(LETTERS)} options (extra keys {extra}); the schema allows {len(LETTERS)}",
        )
    # The file is named after its data set; fall back to it when an item omits "dataset".
    dataset = _text(item.get("dataset")) or path.stem
    rid = f"{dataset}/{_text(qid)}"
    where = f"{rel} item {index} (id {rid})"
    try:
        modality = canonical_modality(str(modality_raw))
        question_type = canonical_question_type(str(item["question_type"]))
    except RecordError as e:
        raise RecordError(e.reason, f"{where}: {e}") from None
    # Options in A..D order; absent or empty ones are dropped (2-option items leave C/D out or "").
    options = [t for t in (_text(item.get(f"option_{ch}")) for ch in LETTERS) if t]
    gt = _text(item["gt_answer"]).casefold()
    matches = [k for k, opt in enumerate(options) if opt.casefold() == gt]
    if not matches:
        raise RecordError(
            "answer_not_in_options",
            f"{where}: gt_answer {item['gt_answer']!r} is not one of the options {options}",
        )
    answer = LETTERS[matches[0]]
    image_rel = _text(item["image_path"])
    rec = {
        "id": rid,
        "question": _text(item["question"]),
        "options": options,
        "answer": answer,
        "answer_text": options[matches[0]],
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


def parse_problem(problem: str) -> tuple[str, list[str]]:
    """Split a Med-R1 ``problem`` into question text and options.

    Options are inline, marked ``A)``..``D)`` (or ``(A)``), with or without spaces, commas or newlines
    between them. The option block is the *last* run of markers A, B, C, ... in order, so a stray
    "A)" inside the question does not start it. Returns ``(question, [])`` when fewer than two
    markers are found.

    >>> parse_problem("Which modality? A)CT, B)X-ray, C)MRI, D)US")
    ('Which modality?', ['CT', 'X-ray', 'MRI', 'US'])
    """
    marks = [(m.start(), m.end(), m.group(1)) for m in _OPTION_MARKER.finditer(problem)]
    best: list[tuple[int, int, str]] = []
    for k, (_, _, ch) in enumerate(marks):
        if ch != "A":
            continue
        chain = [marks[k]]
        for m in marks[k + 1 :]:
            # Past D too: a fifth option must be seen (and the item skipped), not glued onto option D.
            if len(chain) == len(_MARKER_LETTERS):
                break
            if m[2] == _MARKER_LETTERS[len(chain)]:
                chain.append(m)
        if len(chain) >= 2:
            best = chain  # later chains win: the options come after the question
    if len(best) < 2:
        return problem.strip(), []
    question = _OPTIONS_LABEL.sub("", problem[: best[0][0]]).strip()
    options = []
    for j, (_, end, _) in enumerate(best):
        stop = best[j + 1][0] if j + 1 < len(best) else len(problem)
        options.append(problem[end:stop].strip().rstrip(",;").strip())
    return question, options


def parse_solution(solution: str) -> str | None:
    """The answer in a Med-R1 ``solution`` (``"<answer> C </answer>"`` -> ``"C"``), upper-cased; a bare
    ``"C"`` / ``"C)"`` is accepted too. None if nothing letter-like is found."""
    m = _ANSWER_TAG.search(solution)
    body = (m.group(1) if m else solution).strip()
    # A lone letter ("C", "(C)", "C.") or a letter with punctuation before more text ("C) MRI"); a
    # plain word such as "a lesion" is not read as an answer.
    m2 = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?|\(?([A-Za-z])[).:]\s.*", body, re.S)
    if not m2:
        return None
    return (m2.group(1) or m2.group(2)).upper()


def guess_question_type(question: str) -> tuple[str, str]:
    """Best-guess question type from keywords in ``question``: ``(type, "keywords" | "fallback")``."""
    for qtype, pattern in _QTYPE_KEYWORDS:
        if pattern.search(question):
            return qtype, "keywords"
    return FALLBACK_QUESTION_TYPE, "fallback"


def guess_modality(
    question: str, *, answer_text: str = "", question_type: str = "", hints: Iterable[str] = ()
) -> tuple[str, str]:
    """Best-guess modality: ``(modality, "answer" | "keywords" | "fallback")``.

    A modality-recognition question's answer *is* the modality. Otherwise keywords are looked for in
    the question and ``hints`` (dataset name, image path); exactly one modality must match, since an
    ambiguous match is no better than the fallback.
    """
    if question_type == "Modality Recognition" and answer_text:
        try:
            return canonical_modality(answer_text), "answer"
        except RecordError:
            pass
    found: set[str] = set()
    for text in (question, *hints):
        for modality, pattern in _MODALITY_KEYWORDS:
            if pattern.search(text):
                found.add(modality)
    if len(found) == 1:
        return found.pop(), "keywords"
    return FALLBACK_MODALITY, "fallback"


def _medr1_attribute(stem: str, axis: str) -> str:
    """The modality / question type named by a Med-R1 file stem (``CT(Computed Tomography)_train``)."""
    name = re.sub(r"_(train|test|val)$", "", stem, flags=re.I).replace("_", " ").strip()
    if axis == "modality":
        return canonical_modality(name)
    try:
        return canonical_question_type(name)
    except RecordError:
        alias = _QTYPE_FILE_ALIASES.get(name.lower())
        if alias is None:
            raise
        return alias


def _dataset_from_image(image_rel: str) -> str:
    """OmniMedVQA images live under ``Images/<Dataset>/...``; Med-R1 items name no data set otherwise."""
    parts = Path(image_rel).parts
    for k, part in enumerate(parts[:-1]):
        if part.lower() == "images" and k + 1 < len(parts) - 1:
            return parts[k + 1]
    return parts[-2] if len(parts) >= 2 else "unknown"


def _medr1_candidates(root: Path, axis: str, result: LoadResult) -> Iterator[_Candidate]:
    tree = root / MEDR1_DIR / axis
    if not tree.is_dir():
        raise FileNotFoundError(f"Med-R1 layout expects {tree} (axis={axis!r}) with train/ and test/ folders")
    files = [(sp, p) for sp in MEDR1_SPLITS for p in sorted((tree / sp).glob("*.json"))]
    if not files:
        raise FileNotFoundError(f"no <Name>_{{train,test}}.json files under {tree}/{{train,test}}")
    other = "question_type" if axis == "modality" else "modality"
    for split, path in files:
        rel = path.relative_to(root).as_posix()
        try:
            known = _medr1_attribute(path.stem, axis)
        except RecordError as e:
            # Every item of the file is lost: count them all so the totals add up.
            items, _ = _read_json_list(path, rel, result)
            for i in range(len(items or [])):
                result.skip(e.reason, f"{rel} item {i}: file name does not name a known {axis}: {e}")
            continue
        items, encoding = _read_json_list(path, rel, result)
        if items is None:
            continue
        for i, item in enumerate(items):
            where = f"{rel} item {i}"
            if not isinstance(item, dict):
                result.skip("malformed_record", f"{where}: expected a JSON object, got {type(item).__name__}")
                continue
            missing = [k for k in ("image", "problem", "solution") if not isinstance(item.get(k), str)]
            if missing:
                result.skip("missing_field", f"{where}: missing or non-string key(s) {missing}")
                continue
            image_rel = item["image"].strip()
            question, options = parse_problem(item["problem"])
            dataset = _dataset_from_image(image_rel)
            # Content-derived id: stable across runs and identical for the same item in both trees.
            digest = hashlib.sha1(f"{image_rel}\n{item['problem']}".encode()).hexdigest()[:16]
            rid = f"{dataset}/{digest}"
            where = f"{rel} item {i} (id {rid})"
            if len(options) < 2:
                result.skip(
                    "unparseable_options",
                    f"{where}: no A)/B)... options found in problem {item['problem']!r}",
                )
                continue
            if len(options) > len(LETTERS):
                result.skip(
                    "bad_option_count",
                    f"{where}: {len(options)} options {options}; the schema allows {len(LETTERS)}",
                )
                continue
            answer = parse_solution(item["solution"])
            if answer is None:
                result.skip(
                    "unparseable_answer", f"{where}: no answer letter in solution {item['solution']!r}"
                )
                continue
            if answer not in LETTERS[: len(options)]:
                result.skip(
                    "answer_not_in_options",
                    f"{where}: answer {answer!r} but only {len(options)} options {options}",
                )
                continue
            answer_text = options[LETTERS.index(answer)]
            if axis == "modality":
                modality = known
                question_type, how = guess_question_type(question)
            else:
                question_type = known
                modality, how = guess_modality(
                    question, answer_text=answer_text, question_type=known, hints=(dataset, image_rel)
                )
            rec = {
                "id": rid,
                "question": question,
                "options": options,
                "answer": answer,
                "answer_text": answer_text,
                "rationale": "",
                "modality": modality,
                "question_type": question_type,
                "dataset": dataset,
                "split": split,
                "provenance": {
                    "source": SOURCE,
                    "layout": "medr1",
                    "file": rel,
                    "index": i,
                    "question_id": None,  # Med-R1 items carry no OmniMedVQA question_id
                    "image_path": image_rel,
                    "known_axis": axis,
                    "guessed": {other: how},
                    **({"encoding": encoding} if encoding is not None else {}),
                },
            }
            yield rec, where, image_rel
