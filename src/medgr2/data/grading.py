# Over ~450 lines: its split by responsibility is open work of issue 17 (see docs/architecture.md); behaviour is tested as it is.
"""The four-grade reward dataset D_grade that supervises the reward model R_φ (paper §3).

Every source record with a reference rationale yields one row per grade; the graded text is the
assistant response ``<think>rationale</think><answer>X</answer>`` built by
:func:`medgr2.data.prompting.response_text`:

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import datasets

from medgr2.data.prompting import response_text
from medgr2.data.schema import FIELDS, LETTERS, RecordError, index_of, provenance, validate_record
from medgr2.utils.hashing import image_key

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

log = logging.getLogger(__name__)

GRADES: tuple[str, ...] = ("original", "synonym", "deletion", "irrelevant")
IRRELEVANT_MODES: tuple[str, ...] = ("other_record", "wrong_option")

#: Extra columns of a graded row, for ``schema.to_dataset(rows, extra_features=GRADED_FEATURES)``.
GRADED_FEATURES: dict[str, datasets.Value] = {
    "response": datasets.Value("string"),
    "target": datasets.Value("float32"),
    "grade": datasets.Value("string"),
    "source_id": datasets.Value("string"),
}

# Function words are never replaced: WordNet maps many of them to unrelated senses ("is" -> "embody",
# "can" -> "toilet"), which would turn a light paraphrase (grade 6) into nonsense.
STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each either few for from further
    had has have having he her here hers herself him himself his how however i if in into is it its
    itself just may might more most must my myself neither no nor not now of off on once only or other
    our ours ourselves out over own per same shall she should since so some such than that the their
    theirs them themselves then there these they this those through thus to too under until up upon very
    via was we were what when where whether which while who whom whose why will with within without
    would yet you your yours yourself yourselves
    """.split()
)
# Words that are part of the response format or the option labels, whatever their case.
PROTECTED_WORDS: frozenset[str] = frozenset({"think", "answer", "option", "options", "check", "yes",
                                             *LETTERS.lower()})

_RESPONSE_RE = re.compile(r"^\s*<think>(.*)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_TAG_RE = re.compile(r"<[^<>]*>")
# Purely alphabetic tokens not glued to digits or hyphens: "T2", "3cm", "T2-weighted" and "air-filled"
# are left alone (half a compound swapped for a synonym reads as an error, not a paraphrase).
_WORD_RE = re.compile(r"(?<![A-Za-z0-9-])[A-Za-z]+(?![A-Za-z0-9-])")
_SYNONYM_OK_RE = re.compile(r"^[A-Za-z][A-Za-z -]*[A-Za-z]$")


@dataclass
class GradeConfig:
    """How D_grade is built (a Hydra structured config).

    :ivar original/synonym/deletion/irrelevant: the regression target of each grade (paper: 10, 6, 0, -6).
    :ivar synonym_rate: share of the replaceable words (content words with a WordNet synonym) that are
        replaced; at least one is whenever any word is replaceable.
    :ivar synonym_senses: synonyms come from the word's this many most frequent WordNet senses (0: all
        senses); a rare sense ("ribs" -> "ridicule") is a semantic error, not a light paraphrase.
    :ivar deletion_rate: share of the rationale's words deleted.
    :ivar deletion_min_phrases/deletion_max_phrases: the deleted words form this many contiguous spans
        (≥ 2 so the damage is spread and the text is incoherent rather than merely truncated).
    :ivar irrelevant_modes: mode -> sampling weight, modes from :data:`IRRELEVANT_MODES`.
    :ivar seed: global seed; each row's RNG also depends on its record id and grade.
    """

    original: float = 10.0
    synonym: float = 6.0
    deletion: float = 0.0
    irrelevant: float = -6.0
    synonym_rate: float = 0.3
    synonym_senses: int = 2
    deletion_rate: float = 0.4
    deletion_min_phrases: int = 2
    deletion_max_phrases: int = 4
    irrelevant_modes: dict[str, float] = field(
        default_factory=lambda: {"other_record": 0.5, "wrong_option": 0.5}
    )
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("synonym_rate", "deletion_rate"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.synonym_senses < 0:
            raise ValueError(f"synonym_senses must be >= 0 (0: all senses), got {self.synonym_senses}")
        if not 2 <= self.deletion_min_phrases <= self.deletion_max_phrases:
            raise ValueError(
                "need 2 <= deletion_min_phrases <= deletion_max_phrases, got "
                f"{self.deletion_min_phrases}, {self.deletion_max_phrases}"
            )
        unknown = set(self.irrelevant_modes) - set(IRRELEVANT_MODES)
        if unknown:
            raise ValueError(f"unknown irrelevant modes {sorted(unknown)}; known: {IRRELEVANT_MODES}")
        weights = list(self.irrelevant_modes.values())
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"irrelevant_modes weights must be >= 0 with a positive sum: {self.irrelevant_modes}"
            )

    def target(self, grade: str) -> float:
        """The regression target of ``grade``."""
        if grade not in GRADES:
            raise ValueError(f"unknown grade {grade!r}; known: {GRADES}")
        return float(getattr(self, grade))


def rng_for(seed: int, record_id: str, grade: str) -> random.Random:
    """A ``random.Random`` that depends only on ``(seed, record_id, grade)``, stably across processes."""
    digest = hashlib.sha256(json.dumps([seed, record_id, grade]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def split_response(text: str) -> tuple[str, str] | None:
    """``"<think>R</think><answer>X</answer>"`` -> ``(R, X)``; None when ``text`` is not in that format."""
    m = _RESPONSE_RE.match(text)
    return (m.group(1).strip(), m.group(2).strip()) if m else None


def _rebuild(text: str, rationale: str) -> str:
    """Put a modified rationale back in ``text``'s response format (or return it bare)."""
    parts = split_response(text)
    return response_text(rationale, parts[1]) if parts else rationale


def _rationale_of(text: str) -> str:
    parts = split_response(text)
    return parts[0] if parts else text


# ----------------------------------------------------------------------------- synonym (grade 6)


def _usable_synonyms(
    word: str, wn: WordNetCorpusReader, memo: dict[str, list[str]], max_senses: int | None
) -> list[str]:
    """WordNet synonyms fit to stand in ``word``'s place (lowercase key, memoised per call)."""
    from medgr2.data.wordnet import synonyms

    key = word.lower()
    if key not in memo:
        memo[key] = [
            s
            for s in synonyms(key, wn=wn, max_senses=max_senses)
            # Letters, spaces and hyphens only ("U.S.A.", "atomic number 92" are not light paraphrases);
            # capitalised lemmas are proper nouns ("Mass", "America"), wrong for a common word.
            if _SYNONYM_OK_RE.match(s) and s == s.lower()
        ]
    return memo[key]


def _match_case(template: str, word: str) -> str:
    return word[0].upper() + word[1:] if template[:1].isupper() else word


def synonym_perturb(
    text: str,
    rng: random.Random,
    rate: float = 0.3,
    wn: WordNetCorpusReader | None = None,
    max_senses: int | None = 2,
) -> tuple[str, list[tuple[str, str]]]:
    """Replace a share ``rate`` of the replaceable words of ``text``'s rationale by WordNet synonyms.

    Replaceable: alphabetic tokens of ≥ 3 letters (not glued to digits or hyphens), not stop words, not all
    capitals (acronyms: WordNet reads "OCT" as October and "US" as the United States), not a format word,
    and have a synonym; at least one is replaced when any is replaceable. ``text`` may be a full response
    — only the rationale between ``<think>`` and ``</think>`` is touched and the response is rebuilt
    with :func:`response_text`, so the tags and the answer letter survive — or a bare rationale.

    ``max_senses`` limits synonyms to the word's most frequent WordNet senses (see
    :func:`medgr2.data.wordnet.synonyms`; None: all senses, as in EDA-style augmentation).

    :returns: the new text and the ``(word, synonym)`` replacements in text order (empty: nothing was
        replaceable, and the text is returned unchanged).
    """
    from medgr2.data.wordnet import load_wordnet

    wn = wn if wn is not None else load_wordnet()
    rationale = _rationale_of(text)
    tags = [m.span() for m in _TAG_RE.finditer(rationale)]  # stray tags inside the rationale stay as they are
    memo: dict[str, list[str]] = {}
    slots: list[tuple[int, int, str, list[str]]] = []
    for m in _WORD_RE.finditer(rationale):
        word = m.group()
        lower = word.lower()
        if len(word) < 3 or word.isupper() or lower in STOPWORDS or lower in PROTECTED_WORDS:
            continue
        if any(a <= m.start() < b for a, b in tags):
            continue
        candidates = _usable_synonyms(word, wn, memo, max_senses)
        if candidates:
            slots.append((m.start(), m.end(), word, candidates))
    if not slots:
        return text, []
    k = max(1, round(rate * len(slots)))
    chosen = sorted(rng.sample(range(len(slots)), k))
    pieces: list[str] = []
    replacements: list[tuple[str, str]] = []
    last = 0
    for i in chosen:
        start, end, word, candidates = slots[i]
        synonym = rng.choice(candidates)
        pieces += [rationale[last:start], _match_case(word, synonym)]
        replacements.append((word, synonym))
        last = end
    pieces.append(rationale[last:])
    return _rebuild(text, "".join(pieces)), replacements


# ----------------------------------------------------------------------------- deletion (grade 0)


def _composition(rng: random.Random, total: int, parts: int) -> list[int]:
    """A uniformly random split of ``total`` into ``parts`` positive integers."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def delete_phrases(
    text: str, rng: random.Random, rate: float = 0.4, min_phrases: int = 2, max_phrases: int = 4
) -> str:
    """Delete about ``rate`` of the rationale's words in ``min_phrases``..``max_phrases`` contiguous spans.

    Spans are separated by at least one kept word (adjacent spans would merge into one) and at least
    one word is kept. Words are whitespace tokens and the rationale is re-joined with single spaces. In a
    full response the answer letter is kept: grade 0 marks *incoherent reasoning*, and changing the
    letter as well would mix it up with the irrelevant grade (-6) and teach R_φ nothing specific.

    :raises RecordError: ``too_short`` when the rationale has too few words for ``min_phrases`` spans.
    """
    words = _rationale_of(text).split()
    n = len(words)
    # k spans need k deleted words, k - 1 kept separators and one kept word at least.
    if n < min_phrases + max(1, min_phrases - 1):
        raise RecordError("too_short", f"rationale of {n} words cannot lose {min_phrases} phrases")
    n_del = min(max(round(rate * n), min_phrases), n - max(1, min_phrases - 1))
    n_keep = n - n_del
    k = rng.randint(min_phrases, max(min_phrases, min(max_phrases, n_del, n_keep + 1)))
    spans = _composition(rng, n_del, k)
    # Kept words fill k + 1 gaps; the k - 1 inner gaps get one word each first (stars and bars for the rest).
    gaps = [g - 1 for g in _composition(rng, n_keep - (k - 1) + k + 1, k + 1)]
    for i in range(1, k):
        gaps[i] += 1
    kept: list[str] = []
    pos = 0
    for i in range(k):
        kept += words[pos : pos + gaps[i]]
        pos += gaps[i] + spans[i]
    kept += words[pos:]
    return _rebuild(text, " ".join(kept))


# ----------------------------------------------------------------------------- irrelevant (grade -6)


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


# ----------------------------------------------------------------------------- the data set


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
        deleted = len(rec["rationale"].split()) - len(_rationale_of(text).split())
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
    "split_response",
    "synonym_perturb",
]
