"""The text operations that turn a reference response into a lower grade of D_grade (paper §3).

The response format ``<think>rationale</think><answer>X</answer>`` is split with :func:`medgr2.data.response_format.split_response`;
:func:`synonym_perturb` makes the synonym grade (light WordNet paraphrase) and :func:`delete_phrases` the
deletion grade (incoherent rationale). Both touch only the rationale and rebuild the response around it, so
the tags and the answer letter survive. The random choices come from the ``rng`` the caller passes
(:func:`medgr2.data.grade_config.rng_for`).
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

from medgr2.data.response_format import rationale_of, response_text, split_response
from medgr2.data.schema import LETTERS, RecordError

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

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

_TAG_RE = re.compile(r"<[^<>]*>")
# Purely alphabetic tokens not glued to digits or hyphens: "T2", "3cm", "T2-weighted" and "air-filled"
# are left alone (half a compound swapped for a synonym reads as an error, not a paraphrase).
_WORD_RE = re.compile(r"(?<![A-Za-z0-9-])[A-Za-z]+(?![A-Za-z0-9-])")
_SYNONYM_OK_RE = re.compile(r"^[A-Za-z][A-Za-z -]*[A-Za-z]$")


def _rebuild(text: str, rationale: str) -> str:
    """Put a modified rationale back in ``text``'s response format (or return it bare)."""
    parts = split_response(text)
    return response_text(rationale, parts[1]) if parts else rationale


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
    rationale = rationale_of(text)
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
    words = rationale_of(text).split()
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



__all__ = ["PROTECTED_WORDS", "STOPWORDS", "delete_phrases", "synonym_perturb"]
