"""How a raw model response is scored against a record: the evaluation protocols of the peers.

Published OmniMedVQA numbers come from different protocols, and the same responses score differently under
each, so every evaluation says which one it used (``evaluate.protocol``, an MLflow param and tag) and saved
predictions keep the raw response so that :func:`rescore` can score them under another one.

``lenient`` (default)
    The last closed ``<answer>`` tag; its content must open with the letter, which may be lower case or
    bracketed (``b``, ``(B)``, ``C) text``): :func:`medgr2.data.response_format.extract_answer`.
``medr1``
    Med-R1's evaluation: the first ``<answer>`` tag whose content is one word (``<answer>\\s*(\\w+)\\s*</answer>``,
    ``re.search``), compared with the gold letter exactly; ``b`` or ``(B)`` is wrong.
``omnimedvqa``
    The official OmniMedVQA evaluation (Multi-Modality-Arena) shows the options as text and matches the reply
    to the most similar option, then compares that option's text with ``gt_answer``. Here the reply is the last
    ``<answer>`` tag's content (else the whole response); an option whose text equals the reply (ignoring case)
    wins, else the one option whose text the reply contains, else the most similar option by
    :class:`difflib.SequenceMatcher` ratio. Because our prompts show letters, a reply that is only a letter
    (``B``, ``(B)``, ``B.``) or starts with one (``B) Liver``) selects that option.
``letter``
    MedEvalKit style (``Options: A. …``, answer with the letter): after a leading ``<think>…</think>`` block
    (a reasoning model's thinking, which such kits strip), the rest of the response, or the content of a single
    ``<answer>`` tag making up that rest, must be one bare upper-case option letter, optionally followed by
    ``.`` or in brackets. Anything longer is unparseable.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medgr2.data.response_format import answer_contents, extract_answer
from medgr2.data.schema import LETTERS

__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "check_protocol", "extract", "rescore", "score"]

PROTOCOLS: tuple[str, ...] = ("lenient", "medr1", "omnimedvqa", "letter")
DEFAULT_PROTOCOL = "lenient"

_MEDR1 = re.compile(r"<answer>\s*(\w+)\s*</answer>")
_WHOLE_TAG = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.DOTALL | re.IGNORECASE)
_LEADING_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_BARE = re.compile(r"\(?([A-Z])\)?\.?")
_LEADING_LETTER = re.compile(r"\(?([A-Za-z])\)?(?:[.):]\s*|\s*$)")


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is known, else :class:`ValueError` naming the choices."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def _medr1(response: str, n: int) -> str | None:
    m = _MEDR1.search(response)
    word = m.group(1) if m else None
    return word if word is not None and word in LETTERS[:n] else None


def _letter(response: str, n: int) -> str | None:
    response = _LEADING_THINK.sub("", response, count=1)
    whole = _WHOLE_TAG.fullmatch(response)
    body = (whole.group(1) if whole else response).strip()
    m = _BARE.fullmatch(body)
    return m.group(1) if m and m.group(1) in LETTERS[:n] else None


def _closest_option(reply: str, options: Sequence[str]) -> int | None:
    """Index of the option the reply means, by the official option-text matching; None for an empty reply."""
    text = reply.strip()
    if not text:
        return None
    m = _LEADING_LETTER.match(text)
    if m and m.group(1).upper() in LETTERS[: len(options)]:
        rest = text[m.end():].strip()
        k = LETTERS.index(m.group(1).upper())
        # "B" alone, or "B) Liver" where the text after the letter is that option's (or empty).
        if not rest or rest.casefold().rstrip(".") == options[k].strip().casefold():
            return k
    folded = text.casefold()
    exact = [k for k, o in enumerate(options) if o.strip().casefold() == folded]
    if exact:
        return exact[0]
    contained = [k for k, o in enumerate(options) if o.strip() and o.strip().casefold() in folded]
    if len(contained) == 1:
        return contained[0]
    ratios = [difflib.SequenceMatcher(None, folded, o.strip().casefold()).ratio() for o in options]
    return max(range(len(options)), key=lambda k: ratios[k])


def _omnimedvqa(response: str, options: Sequence[str]) -> str | None:
    tags = answer_contents(response)
    reply = tags[-1] if tags else response
    k = _closest_option(reply, options)
    return LETTERS[k] if k is not None else None


def extract(protocol: str, response: str, options: Sequence[str] | None = None, n_options: int | None = None
            ) -> str | None:
    """The option letter ``response`` selects under ``protocol``, or None (unparseable counts as wrong).

    ``options`` (their texts) are needed by ``omnimedvqa``; ``medr1`` and ``letter`` need their number and
    return only letters among the options; ``lenient`` returns any letter A-D it reads, as it always did.

    >>> extract("lenient", "<answer>(b)</answer>", n_options=4), extract("medr1", "<answer>(b)</answer>", n_options=4)
    ('B', None)
    >>> extract("medr1", "<answer>A</answer> no, <answer>B</answer>", n_options=2)
    'A'
    >>> extract("omnimedvqa", "It is the liver.", ["Kidney", "Liver"])
    'B'
    >>> extract("letter", " C. ", n_options=4), extract("letter", "C) Lung", n_options=4)
    ('C', None)
    """
    check_protocol(protocol)
    n = len(options) if options is not None else n_options
    if n is None:
        raise ValueError("extract needs options or n_options")
    if protocol == "lenient":
        return extract_answer(response)  # unchanged from before protocols existed, out-of-range letters included
    if protocol == "medr1":
        return _medr1(response, n)
    if protocol == "letter":
        return _letter(response, n)
    if options is None:
        raise ValueError("the omnimedvqa protocol matches the reply to the option texts: options are needed")
    return _omnimedvqa(response, options)


def score(protocol: str, response: str, record: Mapping[str, Any]) -> tuple[str | None, bool]:
    """``(selected letter or None, correct)`` for a response to ``record`` (``options`` and ``answer``)."""
    pred = extract(protocol, response, list(record["options"]))
    return pred, pred is not None and pred == str(record["answer"]).strip().upper()


def rescore(predictions: Iterable[Mapping[str, Any]], protocol: str) -> list[dict[str, Any]]:
    """Saved predictions (rows of ``predictions.jsonl``) scored again under ``protocol``, without generating.

    Each row needs the raw ``completion``, the ``gold`` letter and ``n_options`` (``options`` too for
    ``omnimedvqa``); the result is a copy of each row with ``pred`` and ``protocol`` replaced. Raises
    :class:`ValueError` naming the first row that lacks what the protocol needs.
    """
    check_protocol(protocol)
    out = []
    for i, row in enumerate(predictions):
        options = row.get("options")
        if not isinstance(row.get("completion"), str):
            raise ValueError(f"prediction {i} (id {row.get('id')}): no raw 'completion' to rescore")
        if protocol == "omnimedvqa" and not isinstance(options, list | tuple):
            raise ValueError(f"prediction {i} (id {row.get('id')}): no 'options' texts, which the omnimedvqa "
                             "protocol needs (predictions saved before they were recorded)")
        n = len(options) if isinstance(options, list | tuple) else int(row["n_options"])
        pred = extract(protocol, row["completion"], list(options) if options is not None else None, n_options=n)
        out.append({**row, "pred": pred, "protocol": protocol})
    return out
