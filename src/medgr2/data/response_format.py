"""The one owner of the response format ``<think>rationale</think><answer>X</answer>`` (Med-R1 / MedVLM-R1):
how a response is written (:func:`response_text`) and every way the project reads one back.

The readers differ on purpose, each documented where it is used:

- :func:`extract_answer`: the policy's predicted letter (GRPO's match reward, the ``lenient`` evaluation);
- :func:`bare_answer_letter`: the last tag holding exactly one letter (R_φ's resolved option line);
- :func:`split_response`: ``(rationale, answer)`` of a well-formed response (the D_grade perturbations);
- :func:`first_answer_content`: the first tag's content (Med-R1's ``solution`` fields);
- :func:`format_reward`: Med-R1's whole-response format check.

The evaluation protocols that emulate other projects' scorers (``medr1``, ``omnimedvqa``, ``letter``) keep their
own rules in :mod:`medgr2.evaluation.protocols`; they read tags through :func:`answer_contents` where they can.
"""

from __future__ import annotations

import re

__all__ = [
    "ANSWER_TAG",
    "answer_contents",
    "bare_answer_letter",
    "extract_answer",
    "extract_think",
    "first_answer_content",
    "format_reward",
    "rationale_of",
    "response_text",
    "split_response",
]

#: The opening answer tag (the collators cut a response there; the evaluation appends it).
ANSWER_TAG = "<answer>"

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_THINK_TAG = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
# A letter A-D at the very start of the tag content, optionally in brackets, that is a word of its own:
# "B", "(B)", "[b]", "B.", "B) text", "B: text" parse; "Bone" or "Option B" do not.
_LETTER = re.compile(r"[(\[]?\s*([A-Da-d])(?![A-Za-z0-9])")
_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
# Greedy rationale: a rationale may itself mention "</think>" only if the response closes it again.
_RESPONSE = re.compile(r"^\s*<think>(.*)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
# R_φ's reader (case-sensitive tags, as the policy writes them), kept exactly as trained: any change of what it
# reads changes R_φ's inputs, hence every score and cache built on them.
_BARE_ANSWER = re.compile(r"<answer>\s*([A-Za-z])\s*</answer>")


def response_text(rationale: str | None, answer_letter: str, think: bool = True) -> str:
    """The assistant response: ``<think>…</think><answer>X</answer>`` (or the answer tag only).

    >>> response_text(" round, bright ", "B")
    '<think>round, bright</think><answer>B</answer>'
    >>> response_text(None, "C", think=False)
    '<answer>C</answer>'
    """
    if think:
        return f"<think>{(rationale or '').strip()}</think><answer>{answer_letter}</answer>"
    return f"<answer>{answer_letter}</answer>"


def answer_contents(text: str) -> list[str]:
    """The contents of every closed ``<answer>…</answer>`` tag (tag case ignored), in order, unstripped.

    >>> answer_contents("<answer> A </answer> or <ANSWER>b)</ANSWER>")
    [' A ', 'b)']
    """
    return _ANSWER_TAG.findall(text)


def extract_answer(text: str) -> str | None:
    """Option letter (upper case) from the last closed ``<answer>...</answer>`` tag, else ``None``.

    The letter must open the tag's content (after spaces and an optional bracket) and stand alone, so free
    text that merely mentions a letter later is not read as an answer. An unclosed tag (a truncated
    completion) gives ``None``: the evaluation counts it as unparseable, like Med-R1. Note that a content
    starting with the article "A " (``<answer>A lesion</answer>``) parses as ``"A"``.

    >>> extract_answer("<think>left side</think><answer> (b) </answer>")
    'B'
    >>> extract_answer("<answer>C) Fundus photography</answer>")
    'C'
    >>> extract_answer("<answer>A</answer> wait, <answer>D.</answer>")
    'D'
    >>> extract_answer("<answer>Option B</answer>") is None
    True
    >>> extract_answer("The answer is B") is None
    True
    """
    contents = answer_contents(text)
    if not contents:
        return None
    m = _LETTER.match(contents[-1].strip())
    return m.group(1).upper() if m else None


def bare_answer_letter(text: str) -> str | None:
    """The letter (upper case, any of A-Z) of the last ``<answer>`` tag (lower-case tag) whose content is exactly
    one letter (spaces aside), else ``None``.

    Stricter than :func:`extract_answer`: R_φ appends the option this letter points at, and a tag such as
    ``<answer>B) red</answer>`` already names its option.

    >>> bare_answer_letter("<answer> c </answer>"), bare_answer_letter("<answer>B) red</answer>")
    ('C', None)
    >>> bare_answer_letter("<answer>A</answer> then <answer>maybe</answer>")
    'A'
    """
    letters = _BARE_ANSWER.findall(text)
    return letters[-1].upper() if letters else None


def first_answer_content(text: str) -> str | None:
    """The stripped content of the first ``<answer>`` tag, else ``None`` (Med-R1's ``solution`` fields).

    >>> first_answer_content("<answer> C </answer>"), first_answer_content("C")
    ('C', None)
    """
    contents = answer_contents(text)
    return contents[0].strip() if contents else None


def extract_think(text: str) -> str | None:
    """Stripped content of the first ``<think>...</think>`` tag (the rationale), else ``None``.

    >>> extract_think("<think> lesion: yes, left </think><answer>B</answer>")
    'lesion: yes, left'
    >>> extract_think("<answer>B</answer>") is None
    True
    """
    m = _THINK_TAG.search(text)
    return m.group(1).strip() if m else None


def split_response(text: str) -> tuple[str, str] | None:
    """``"<think>R</think><answer>X</answer>"`` -> ``(R, X)`` stripped; None when ``text`` is not in that format.

    >>> split_response("<think> two words </think> <answer>B</answer>")
    ('two words', 'B')
    >>> split_response("B") is None
    True
    """
    m = _RESPONSE.match(text)
    return (m.group(1).strip(), m.group(2).strip()) if m else None


def rationale_of(text: str) -> str:
    """The rationale of a response in the ``<think>…</think><answer>…</answer>`` format, else ``text``."""
    parts = split_response(text)
    return parts[0] if parts else text


def format_reward(text: str) -> float:
    """1.0 if the whole completion is ``<think>...</think>`` then ``<answer>...</answer>``, else 0.0.

    Med-R1's format reward (``re.fullmatch`` with DOTALL, case-sensitive tags); surrounding whitespace
    is ignored, any other text outside the two tags gives 0.

    >>> format_reward("<think>round, bright</think>\\n<answer>A</answer>")
    1.0
    >>> format_reward("Sure! <think>x</think><answer>A</answer>")
    0.0
    """
    return 1.0 if _FORMAT.fullmatch(text.strip()) else 0.0
