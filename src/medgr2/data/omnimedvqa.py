"""OmniMedVQA loader: raw ``QA_information`` files or the Med-R1 ``Splits`` trees -> schema records.

Two on-disk layouts are understood (``docs/omnimedvqa.md`` lists the real data's quirks and how each is
handled):

``raw`` (:mod:`medgr2.data.omnimedvqa_raw`)
    ``root/QA_information/Open-access/<Dataset>.json``: ``gt_answer`` is the option *text*, turned into its
    letter (exact match first, ignoring case only when unique); no official split, so one is assigned by
    hashing the image path (:func:`hash_split`).

``medr1`` (:mod:`medgr2.data.omnimedvqa_medr1`)
    ``root/Splits/{modality,question_type}/{train,test}/<Name>_{train,test}.json``: options inline in
    ``problem``, the letter in ``solution``. A file name gives one attribute; the other is joined from the other
    tree or from ``QA_information`` (:mod:`medgr2.data.omnimedvqa_join`), else marked ``"unknown"``.

Items whose options repeat up to case ("Thyroid Gland" / "Thyroid gland") are kept, and counted under the
``repeated_options`` warning, unless the answer is one of the repeats. The loader never raises on one bad
record: every item that does not become a record is counted in :attr:`LoadResult.skipped` under a short
reason, with the first few messages (naming file and item) kept in :attr:`LoadResult.examples`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from medgr2.data.leakage import image_disjoint as drop_shared_images
from medgr2.data.omnimedvqa_io import ImageChecker as _ImageChecker
from medgr2.data.omnimedvqa_io import LoadResult
from medgr2.data.omnimedvqa_join import AttributeFiller
from medgr2.data.omnimedvqa_medr1 import (
    AXES,
    MEDR1_DIR,
    MEDR1_SPLITS,
    medr1_candidates,
    parse_problem,
    parse_solution,
)
from medgr2.data.omnimedvqa_raw import RAW_QA_DIR, RAW_SPLIT_FRACTIONS, RAW_SPLITS, hash_split, raw_candidates
from medgr2.data.schema import (
    UNKNOWN,
    RecordError,
    canonical_modality,
    canonical_question_type,
    make_record,
    repeated_options,
    validate_record,
)

__all__ = [
    "LAYOUTS",
    "LoadResult",
    "RAW_SPLIT_FRACTIONS",
    "detect_layout",
    "hash_split",
    "load_omnimedvqa",
    "parse_problem",
    "parse_solution",
]

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("raw", "medr1")


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
    qa_root: str | Path | None = None,
    image_disjoint: bool = False,
) -> LoadResult:
    """Load OmniMedVQA as validated schema records, counting (never raising on) unusable items.

    Args:
        root: the OmniMedVQA folder (holding ``QA_information`` and ``Images``) or a Med-R1 folder
            (holding ``Splits``).
        layout: ``"raw"``, ``"medr1"`` or ``"auto"`` (raw if ``QA_information`` exists, else medr1 if
            ``Splits`` exists, else :class:`FileNotFoundError`).
        split: keep only this split; None keeps all. Raw layout: ``train``/``val``/``test`` assigned by
            :func:`hash_split` of the image path (80/10/10), so all questions about one image share a
            split. Med-R1 layout: ``train``/``test`` from the folder (split by question: images recur).
        modalities, question_types: keep only these (any alias accepted, e.g. ``"MR"``); items left
            out are counted in :attr:`LoadResult.filtered`.
        limit: stop after this many records (the rest of the data is not scanned).
        axis: Med-R1 layout only: which tree to read, ``"modality"`` (cross-modality protocol) or
            ``"question_type"`` (cross-task protocol).
        image_root: folder that image paths are relative to (default ``root``). Med-R1 split files
            refer to OmniMedVQA's ``Images/`` folder, which may live elsewhere.
        verify_images: run PIL ``verify()`` on each image (default). False only checks that the file
            exists, is non-empty and has a recognised image header.
        qa_root: Med-R1 layout only: an OmniMedVQA folder holding ``QA_information/Open-access``, used to
            fill attributes that the other tree does not give (joined on image + question text).
        image_disjoint: drop the training questions whose image (by path or content) is also in the test
            split; counted in ``filtered["image_disjoint"]``. The whole data set is read to find them, and
            ``limit`` applies afterwards.

    Filters run before the duplicate-id and image checks (opening ~82k images is the slow part), so
    ``skipped`` counts those problems only among the items that the filters keep.

    Med-R1 attributes: the tree's file name gives ``provenance["known_axis"]``; the other attribute comes from
    the other tree (same image + problem), else ``QA_information`` (same image + question), else stays
    ``"unknown"`` (counted once under the ``attribute_unknown`` warning). ``provenance["attributes"]`` says
    where each came from and :attr:`LoadResult.attributes` counts the sources.

    Skip reasons: ``missing_field``, ``malformed_record``, ``malformed_json`` (once per file: not JSON, or
    not a list; a file that is JSON in a legacy 8-bit encoding is read, item by item, and counted under
    :attr:`LoadResult.warnings` ``non_utf8_json`` instead), ``unknown_modality``, ``unknown_question_type``,
    ``answer_not_in_options``, ``ambiguous_answer`` (raw: the answer text matches several options ignoring
    case, none exactly), ``answer_is_repeated_option``, ``duplicate_id`` (the first accepted record with an id
    wins; when the copies are in different splits, also the warning ``question_in_two_splits``), ``missing_image``, ``unreadable_image`` (also truncated JPEGs and images past PIL's
    decompression-bomb limit), ``bad_option_count`` (more than 4 options), Med-R1 only
    ``unparseable_options`` / ``unparseable_answer``, plus any :class:`RecordError` reason raised by
    :func:`~medgr2.data.schema.validate_record`.

    Raises:
        FileNotFoundError: ``root`` (or ``qa_root``) does not exist or holds neither layout.
        ValueError: bad ``layout``, ``split``, ``axis``, filter value or ``limit``.
    """
    kwargs = dict(layout=layout, modalities=modalities, question_types=question_types, axis=axis,
                  image_root=image_root, verify_images=verify_images, qa_root=qa_root)
    if image_disjoint:
        return _load_image_disjoint(root, split, limit, kwargs)
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
    seen: dict[str, str] = {}  # id -> split of the copy kept

    if used == "raw":
        candidates = raw_candidates(root, result)
        filler = None
    else:
        qa = Path(qa_root).expanduser().absolute() if qa_root is not None else None
        filler = AttributeFiller(root, axis, qa, result)
        candidates = medr1_candidates(root, axis, result)

    for rec, where, image_rel in candidates:
        if limit is not None and len(result.records) >= limit:
            result.truncated = True
            break
        if filler is not None:
            filler.fill(rec)
        why = filters.reject(rec["split"], rec["modality"], rec["question_type"])
        if why is not None:
            result.filtered[why] += 1
            continue
        if rec["id"] in seen:
            result.skip("duplicate_id", f"{where}: duplicate id {rec['id']!r} (the first one is kept)")
            if seen[rec["id"]] != rec["split"]:  # the very same question on both sides: leakage, and a lost item
                result.warn("question_in_two_splits", f"{where}: the same question is in {seen[rec['id']]!r} "
                            f"and {rec['split']!r}; only the {seen[rec['id']]} copy is kept")
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
        seen[rec["id"]] = rec["split"]
        result.records.append(rec)
        _count_kept(result, rec, where)
    _warn_unknown(result, axis, qa_root is not None)
    return result


def _count_kept(result: LoadResult, rec: dict, where: str) -> None:
    """Per kept record: repeated options (a warning) and where its attributes came from."""
    groups = repeated_options(rec["options"])
    if groups:
        reps = "; ".join(" / ".join(repr(rec["options"][k]) for k in g) for g in groups)
        result.warn("repeated_options", f"{where}: options repeat ({reps}); kept, the answer "
                    f"{rec['answer']} ({rec['answer_text']!r}) is not one of them")
    if result.layout == "medr1":
        for field, source in json.loads(rec["provenance"])["attributes"].items():
            result.attributes[f"{field} <- {source}"] += 1


def _warn_unknown(result: LoadResult, axis: str, with_qa: bool) -> None:
    """One warning per attribute with the count of records whose value stayed unknown."""
    n = {f: sum(r[f] == UNKNOWN for r in result.records) for f in AXES}
    qa = "not in QA_information either" if with_qa else "no QA_information given (data.qa_root)"
    for field, count in n.items():
        if count:
            how = "Med-R1's unknown_<split>.json file" if field == axis else (
                f"the {axis} tree's file names, not found in the other tree")
            how += f"; {qa}"
            result.warn("attribute_unknown", f"{count} records have {field} = {UNKNOWN!r}: not given by {how}; "
                        "they count under 'unknown' in every per-" + field.replace("_", "-") + " table", count=count)


def _load_image_disjoint(root: str | Path, split: str | None, limit: int | None, kwargs: dict) -> LoadResult:
    """:func:`load_omnimedvqa` with ``image_disjoint``: load everything, drop training questions about test
    images, then apply ``split`` and ``limit``."""
    res = load_omnimedvqa(root, split=None, limit=None, **kwargs)
    kept, removed = drop_shared_images(res.records)
    res.filtered["image_disjoint"] += removed
    if removed:
        log.warning("OmniMedVQA: data.image_disjoint removed %d training questions whose image is in the test "
                    "split", removed)
    if split is not None:
        res.filtered["split"] += sum(r["split"] != split for r in kept)
        kept = [r for r in kept if r["split"] == split]
    if limit is not None and len(kept) > limit:
        kept, res.truncated = kept[:limit], True
    res.records = list(kept)
    return res
