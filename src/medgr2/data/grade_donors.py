"""Donors for the irrelevant grade of D_grade (-6): another record's response, or a fluent rationale for a
wrong option of this question (paper §3).

:class:`DonorPool` indexes the records whose rationale may be borrowed once; :func:`irrelevant_response`
makes one irrelevant response with the ``rng`` the caller passes
(:func:`medgr2.data.grade_config.rng_for`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from medgr2.data.grade_config import IRRELEVANT_MODES
from medgr2.data.response_format import response_text
from medgr2.data.schema import LETTERS, RecordError, index_of
from medgr2.utils.hashing import image_key


def _answer_text(rec: Mapping[str, Any]) -> str:
    text = rec.get("answer_text") or ""
    if not text and rec.get("options") and rec.get("answer"):
        text = rec["options"][index_of(rec["answer"])]
    return str(text).strip().lower()


def _image_key(image: Any) -> str | None:
    """:func:`~medgr2.utils.hashing.image_key`, with None for an image that cannot be told apart (absent).

    A PIL image without ``tobytes`` (never seen) falls back to unknown rather than an error."""
    try:
        key = image_key(image)
    except TypeError:
        return None
    return None if key == "none" else key


class DonorPool:
    """The records whose rationale may be borrowed for irrelevant responses, indexed once.

    Look-ups sample a bounded number of candidates instead of scanning the pool, so building D_grade
    stays linear in the number of records.
    """

    TRIES = 64

    def __init__(self, records: Sequence[Mapping[str, Any]]):
        # Sorted by id so that a donor choice depends on which records exist, not on their order.
        self.records = sorted(
            (r for r in records if (r.get("rationale") or "").strip()), key=lambda r: str(r["id"])
        )
        self.by_qtype: dict[str, list[int]] = {}
        self.by_qtype_answer: dict[tuple[str, str], list[int]] = {}
        for i, rec in enumerate(self.records):
            qtype = str(rec.get("question_type", ""))
            self.by_qtype.setdefault(qtype, []).append(i)
            self.by_qtype_answer.setdefault((qtype, _answer_text(rec)), []).append(i)
        self._image_keys: dict[int, str | None] = {}

    def __len__(self) -> int:
        return len(self.records)

    def image_key(self, i: int) -> str | None:
        """Image key of donor ``i`` (computed on first use: hashing every image up front is wasted)."""
        if i not in self._image_keys:
            self._image_keys[i] = _image_key(self.records[i].get("image"))
        return self._image_keys[i]

    def candidates(self, rng: random.Random, indices: Sequence[int]) -> list[int]:
        """Indices to try, in random order: all of a small list, else :attr:`TRIES` random draws."""
        if len(indices) <= self.TRIES:
            return rng.sample(list(indices), len(indices))
        return [indices[rng.randrange(len(indices))] for _ in range(self.TRIES)]


def _other_record(rec: Mapping[str, Any], pool: DonorPool, rng: random.Random) -> tuple[str, str, int]:
    """Best of the sampled donors: another id, and preferably another image, answer and question."""
    rid, answer, question = rec["id"], _answer_text(rec), str(rec.get("question", "")).strip().lower()
    own_image = _image_key(rec.get("image"))
    best, best_score = None, -1
    for i in pool.candidates(rng, range(len(pool))):
        donor = pool.records[i]
        if donor["id"] == rid:
            continue
        donor_image = pool.image_key(i)
        score = (
            int(own_image is None or donor_image is None or donor_image != own_image)
            + int(_answer_text(donor) != answer)
            + int(str(donor.get("question", "")).strip().lower() != question)
        )
        if score > best_score:
            best, best_score = i, score
            if score == 3:
                break
    if best is None:
        raise RecordError("no_donor", f"record {rid}: no other record with a rationale to borrow from")
    donor = pool.records[best]
    return response_text(donor["rationale"], donor["answer"].strip().upper()), donor["id"], best_score


def _wrong_option(rec: Mapping[str, Any], pool: DonorPool, rng: random.Random) -> tuple[str, str, bool]:
    """A donor rationale of the same question type arguing for another answer, with a wrong letter."""
    rid, answer, qtype = rec["id"], _answer_text(rec), str(rec.get("question_type", ""))
    options = [str(o) for o in rec.get("options") or []]
    correct = index_of(rec["answer"])
    wrong = [i for i in range(len(options)) if i != correct]
    if not wrong:
        raise RecordError("no_wrong_option", f"record {rid}: only one option, no wrong letter to point at")
    # Best: a donor whose answer *is* one of this record's wrong options -> a coherent, confidently wrong
    # response (rationale and letter agree with each other but not with the image).
    matched: list[tuple[int, int]] = []
    for opt in wrong:
        for i in pool.by_qtype_answer.get((qtype, options[opt].strip().lower()), []):
            if pool.records[i]["id"] != rid:
                matched.append((i, opt))
    if matched:
        i, opt = matched[rng.randrange(len(matched))]
        return response_text(pool.records[i]["rationale"], LETTERS[opt]), pool.records[i]["id"], True
    # Else any same-type donor with another answer; failing that (a question type seen once) any donor
    # with another answer: still a fluent rationale with a wrong letter, which is what the grade needs.
    for indices in (pool.by_qtype.get(qtype, []), range(len(pool))):
        for i in pool.candidates(rng, indices):
            donor = pool.records[i]
            if donor["id"] != rid and _answer_text(donor) != answer:
                letter = LETTERS[rng.choice(wrong)]
                return response_text(donor["rationale"], letter), donor["id"], False
    raise RecordError("no_donor", f"record {rid}: no record with another answer to borrow a rationale from")


def irrelevant_response(
    rec: Mapping[str, Any],
    pool: DonorPool | Sequence[Mapping[str, Any]],
    rng: random.Random,
    mode: str = "wrong_option",
) -> tuple[str, str]:
    """A grade -6 response for ``rec`` and the id of the record it was borrowed from.

    ``other_record``: the rationale *and* letter of another record (another id; preferably another
    image, answer text and question) — an answer to a different question. Its letter may happen to
    equal this record's correct one; the reasoning is still about something else.
    ``wrong_option``: a fluent rationale from a record of the same question type whose answer text
    differs, with a letter that is always wrong for ``rec``: the option whose text is the donor's answer
    when ``rec`` has it, else a random wrong option.

    :param pool: a :class:`DonorPool` (build it once for many calls) or a list of records.
    :raises RecordError: ``no_donor`` / ``no_wrong_option`` when no such response can be made.
    """
    donors = pool if isinstance(pool, DonorPool) else DonorPool(pool)
    if mode == "other_record":
        response, donor_id, _ = _other_record(rec, donors, rng)
    elif mode == "wrong_option":
        response, donor_id, _ = _wrong_option(rec, donors, rng)
    else:
        raise ValueError(f"unknown irrelevant mode {mode!r}; known: {IRRELEVANT_MODES}")
    return response, donor_id


__all__ = ["DonorPool", "irrelevant_response"]
