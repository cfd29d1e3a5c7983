"""Records as R_φ items: the user turn is the VQA question, the assistant turn the response to score.

With ``resolve_letter`` the response is followed by the text of the option its answer letter points at
(:func:`resolved_answer`), so that "does the letter match the rationale?" is a comparison of two words rather
than a letter-binding the tiny model learns slowly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medgr2.data.grade_config import PROBE_GRADE  # noqa: F401 - re-exported: the grade names' one owner is grade_config
from medgr2.data.prompting import chat_item
from medgr2.data.response_format import bare_answer_letter, response_text
from medgr2.data.schema import LETTERS


def resolved_answer(response: str, options: Sequence[str]) -> str:
    """``"\nB) red"`` for a response whose (last) ``<answer>`` is the letter B of ``options``; ``""`` when the
    response states no letter or one outside the options.

    R_φ reads this line after the response (``resolve_letter``): a letter means nothing without the option
    it points at, and a judge reads both. It turns "is the letter the one the rationale argues for?" into
    comparing two words — which a small VLM learns in minutes — instead of binding shuffled letters to
    options, which it learns slowly (docs/field-facts.md, "Tiny model").
    """
    letter = bare_answer_letter(response or "")
    if letter is None:
        return ""
    idx = LETTERS.find(letter)
    return f"\n{LETTERS[idx]}) {options[idx]}" if 0 <= idx < len(options) else ""


def reward_item(rec: Mapping[str, Any], instruction: str = "", response_key: str = "response",
                resolve_letter: bool = True) -> dict[str, Any]:
    """A record (or a ready item) as a reward-model item: user turn = the VQA question, assistant = the response.

    Accepted inputs: a chat item ``{image, prompt, target}`` (taken as is; ``prefix`` is prepended to the
    response), or a schema record with a ``response`` column (graded rows, candidates, policy samples),
    or a schema record without one, whose reference ``<think>rationale</think><answer>X</answer>`` is scored.
    With ``resolve_letter`` a record's response is followed by :func:`resolved_answer`.
    """
    if "prompt" in rec and "target" in rec and "question" not in rec:
        return {"image": rec["image"], "prompt": rec["prompt"], "prefix": "",
                "target": f"{rec.get('prefix', '')}{rec['target']}"}
    response = rec.get(response_key)
    if not response:
        response = response_text(rec.get("rationale", ""), str(rec["answer"]).strip().upper())
    if resolve_letter:
        response += resolved_answer(response, list(rec.get("options") or []))
    return chat_item(rec, instruction, target=response)
