"""Parsing of ``<think>...</think><answer>...</answer>`` completions (Med-R1 / MedVLM-R1 format).

The policy is prompted to reason inside ``<think>`` and give a single option letter inside ``<answer>``.
These helpers turn a completion into the predicted letter and the format reward.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "extract_think", "format_reward"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_THINK_TAG = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
# A letter A-D at the very start of the tag content, optionally in brackets, that is a word of its own:
# "B", "(B)", "[b]", "B.", "B) text", "B: text" parse; "Bone" or "Option B" do not.
_LETTER = re.compile(r"[(\[]?\s*([A-Da-d])(?![A-Za-z0-9])")
_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


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
    contents = _ANSWER_TAG.findall(text)
    if not contents:
        return None
    m = _LETTER.match(contents[-1].strip())
    return m.group(1).upper() if m else None


def extract_think(text: str) -> str | None:
    """Stripped content of the first ``<think>...</think>`` tag (the rationale), else ``None``.

    >>> extract_think("<think> lesion: yes, left </think><answer>B</answer>")
    'lesion: yes, left'
    >>> extract_think("<answer>B</answer>") is None
    True
    """
    m = _THINK_TAG.search(text)
    return m.group(1).strip() if m else None


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
