"""The four-grade reward dataset D_grade that supervises the reward model R_φ (paper §3).

Every source record with a reference rationale yields one row per grade; the graded text is the
assistant response ``<think>rationale</think><answer>X</answer>`` built by
:func:`medgr2.data.response_format.response_text`:

============  ======  ================================================================================
grade         target  response
============  ======  ================================================================================
original      10      the reference rationale and the correct letter
synonym        6      ~30 % of the content words replaced by a WordNet 3.0 synonym, correct letter
deletion       0      ~40 % of the words removed in ≥ 2 random contiguous spans, correct letter
irrelevant    -6      another record's response (``other_record``) or a fluent rationale for a *wrong*
                      option of this question (``wrong_option``)
============  ======  ================================================================================

Every choice is drawn from ``random.Random`` seeded with a SHA-256 of ``(seed, record id, grade)``
(never Python's salted ``hash()``), and donors are indexed in id order, so the data set is identical
across runs, processes and record orders. The original, synonym and deletion rows depend on their own
record only; an irrelevant row also depends on which other records are in the pool.

:func:`build_graded` returns ``(rows, skipped)``: ``skipped`` is a :class:`collections.Counter` of
reasons (``no_rationale`` per record; ``no_synonym``, ``too_short``, ``no_donor``… per missing row) so
a caller can log or assert what was left out; a row that cannot honestly carry its grade (e.g. a
"synonym" row in which no word has a WordNet synonym) is dropped rather than mislabelled.

The grades and their config live in :mod:`medgr2.data.grade_config`, the synonym and deletion texts in
:mod:`medgr2.data.grade_perturbations`, the irrelevant donors in :mod:`medgr2.data.grade_donors`; the
wrong-letter rows and the held-out split of the reward stage in :mod:`medgr2.data.grade_transforms`. This
module assembles the rows.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import datasets

from medgr2.data.grade_config import GRADES, IRRELEVANT_MODES, GradeConfig, rng_for
from medgr2.data.grade_donors import DonorPool, irrelevant_response
from medgr2.data.grade_perturbations import delete_phrases, synonym_perturb
from medgr2.data.response_format import rationale_of, response_text
from medgr2.data.schema import FIELDS, RecordError, provenance, validate_record

#: Extra columns of a graded row, for ``schema.to_dataset(rows, extra_features=GRADED_FEATURES)``.
GRADED_FEATURES: dict[str, datasets.Value] = {
    "response": datasets.Value("string"),
    "target": datasets.Value("float32"),
    "grade": datasets.Value("string"),
    "source_id": datasets.Value("string"),
}

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

log = logging.getLogger(__name__)


def _grade_response(
    grade: str,
    rec: Mapping[str, Any],
    cfg: GradeConfig,
    pool: DonorPool,
    wn: WordNetCorpusReader | None,
) -> tuple[str, dict[str, Any]]:
    """The response for one (record, grade) and what was done, for the row's provenance."""
    rng = rng_for(cfg.seed, rec["id"], grade)
    original = response_text(rec["rationale"], rec["answer"].strip().upper())
    if grade == "original":
        return original, {}
    if grade == "synonym":
        text, replacements = synonym_perturb(original, rng, cfg.synonym_rate, wn, cfg.synonym_senses or None)
        if not replacements:
            raise RecordError("no_synonym", f"record {rec['id']}: no word of the rationale has a synonym")
        return text, {"replacements": [list(r) for r in replacements]}
    if grade == "deletion":
        text = delete_phrases(
            original, rng, cfg.deletion_rate, cfg.deletion_min_phrases, cfg.deletion_max_phrases
        )
        deleted = len(rec["rationale"].split()) - len(rationale_of(text).split())
        return text, {"deleted_words": deleted}
    if grade == "irrelevant":
        modes = [m for m, w in cfg.irrelevant_modes.items() if w > 0]
        first = rng.choices(modes, weights=[cfg.irrelevant_modes[m] for m in modes])[0]
        error: RecordError | None = None
        # The drawn mode first; the others only when it cannot be made (e.g. no wrong-answer donor).
        for mode in [first, *(m for m in modes if m != first)]:
            try:
                text, donor_id = irrelevant_response(rec, pool, rng, mode)
                return text, {"mode": mode, "donor_id": donor_id}
            except RecordError as exc:
                error = error or exc
        assert error is not None
        raise error
    raise ValueError(f"unknown grade {grade!r}; known: {GRADES}")


def build_graded(
    records: Sequence[Mapping[str, Any]],
    cfg: GradeConfig | None = None,
    wn: WordNetCorpusReader | None = None,
    grades: Sequence[str] = GRADES,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """D_grade: one row per (record with a rationale, grade).

    A row is the record's schema fields (``id`` becomes ``f"{id}#{grade}"``; ``rationale`` and
    ``answer`` stay the *reference* so the row still describes its question) plus ``response`` (the
    graded text R_φ scores), ``target`` (the grade's value), ``grade`` and ``source_id``. Its
    ``provenance`` gains a ``"grading"`` entry saying what was done (replacements, donor…).

    :param wn: a WordNet reader; loaded with :func:`medgr2.data.wordnet.load_wordnet` when the synonym
        grade is wanted and none is given.
    :returns: ``(rows, skipped)``; ``skipped`` counts invalid records under their
        :class:`RecordError` reason, records without a rationale as ``no_rationale``, and rows that could
        not be made under the reason of their grade (``no_synonym``, ``too_short``, ``no_donor``…).
    """
    cfg = cfg if cfg is not None else GradeConfig()
    unknown = [g for g in grades if g not in GRADES]
    if unknown:
        raise ValueError(f"unknown grades {unknown}; known: {GRADES}")
    skipped: Counter[str] = Counter()
    sources: list[Mapping[str, Any]] = []
    for rec in records:
        if not (rec.get("rationale") or "").strip():
            skipped["no_rationale"] += 1
            continue
        try:
            validate_record(rec)
        except RecordError as exc:
            skipped[exc.reason] += 1
            continue
        sources.append(rec)
    if "synonym" in grades and wn is None and sources:
        from medgr2.data.wordnet import load_wordnet

        wn = load_wordnet()
    pool = DonorPool(sources)
    rows: list[dict[str, Any]] = []
    for rec in sources:
        base = {k: rec.get(k) for k in FIELDS}
        base["options"] = list(base["options"] or [])  # no list shared between a record and its rows
        for grade in grades:
            try:
                response, details = _grade_response(grade, rec, cfg, pool, wn)
            except RecordError as exc:
                skipped[exc.reason] += 1
                continue
            prov = provenance(rec)
            prov["grading"] = {"grade": grade, "seed": cfg.seed, **details}
            rows.append(
                {
                    **base,
                    "id": f"{rec['id']}#{grade}",
                    "provenance": json.dumps(prov, sort_keys=True),
                    "response": response,
                    "target": cfg.target(grade),
                    "grade": grade,
                    "source_id": rec["id"],
                }
            )
    log.info("D_grade: %d rows from %d records; skipped %s", len(rows), len(sources), dict(skipped))
    return rows, skipped


# The D_grade API in one place: callers import the grades, the config and the builder from here.
__all__ = [
    "GRADED_FEATURES",
    "GRADES",
    "IRRELEVANT_MODES",
    "DonorPool",
    "GradeConfig",
    "build_graded",
    "delete_phrases",
    "irrelevant_response",
    "rng_for",
    "synonym_perturb",
]
