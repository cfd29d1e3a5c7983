"""How a VQA record becomes a chat turn and a target response (one place for every stage).

The user turn is the image, the question, the lettered options and an instruction; the assistant turn is
``<think>rationale</think><answer>X</answer>`` (Med-R1 / MedVLM-R1 format, docs/field-facts.md), or just
``<answer>X</answer>`` when the record has no rationale and ``think=False`` (written and read by
:mod:`medgr2.data.response_format`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medgr2.data.schema import LETTERS

# Med-R1's instruction, verbatim in spirit: real checkpoints were RL-tuned with it.
MEDR1_INSTRUCTION = (
    "Your task: 1. Think through the question step by step, enclose your reasoning process in "
    "<think>...</think> tags. 2. Then provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 3. No extra information or text outside of these tags."
)
# The tiny embedded model pays for every prompt token on CPU; it learns the format from SFT anyway.
SHORT_INSTRUCTION = "Think in <think></think>, answer with a letter in <answer></answer>."
NO_THINK_INSTRUCTION = "Answer with the letter in <answer></answer>."

INSTRUCTIONS = {"medr1": MEDR1_INSTRUCTION, "short": SHORT_INSTRUCTION, "no_think": NO_THINK_INSTRUCTION}


def instruction_text(key: str | None) -> str:
    """The prompt instruction ``data.instruction`` names: a key of :data:`INSTRUCTIONS`, any other text as it
    is, ``""`` / None for none."""
    return INSTRUCTIONS.get(key, key) if key else ""


def format_options(options: list[str]) -> str:
    """``["CT", "MRI"]`` -> ``"A) CT\\nB) MRI"``."""
    return "\n".join(f"{LETTERS[i]}) {opt}" for i, opt in enumerate(options))


def user_text(rec: Mapping[str, Any], instruction: str = SHORT_INSTRUCTION) -> str:
    """The text part of the user turn for a record (the image goes before it in the chat message)."""
    text = f"{rec['question']}\n{format_options(list(rec['options']))}"
    return f"{text}\n{instruction}" if instruction else text


#: Rationale styles. ``verify`` states the answer in words, then checks every option up to the chosen one
#: ("Answer: red. Check: A) green? no. B) red? yes."): the letter is then the last one the response wrote, and
#: each verdict compares an option with the stated answer a few tokens back — not a look-up of answer text in the
#: prompt's option list, the step a tiny model could not learn (measured, README "SFT per question type").
#: ``answer`` ends with "The answer is <text>." (the first sessions' format).
RATIONALE_STYLES: tuple[str, ...] = ("verify", "answer")
ANSWER_MARK = " Answer: "
CHECK_MARK = " Check: "


def rationale_text(findings: str, options: list[str], answer_idx: int, style: str = "verify") -> str:
    """What the image shows, then the conclusion in ``style`` (see :data:`RATIONALE_STYLES`).

    >>> rationale_text("CT image. lesion: large red.", ["green", "red", "blue"], 1)
    'CT image. lesion: large red. Answer: red. Check: A) green? no. B) red? yes.'
    >>> rationale_text("CT image.", ["MRI", "CT"], 1, style="answer")
    'CT image. The answer is CT.'
    """
    if style == "answer":
        return f"{findings} The answer is {options[answer_idx]}."
    if style != "verify":
        raise ValueError(f"unknown rationale style {style!r}; known: {', '.join(RATIONALE_STYLES)}")
    checks = " ".join(f"{LETTERS[i]}) {options[i]}? {'yes' if i == answer_idx else 'no'}."
                      for i in range(answer_idx + 1))
    return f"{findings}{ANSWER_MARK}{options[answer_idx]}.{CHECK_MARK}{checks}"


def split_rationale(rationale: str) -> tuple[str, str]:
    """``(findings, conclusion)`` of a rationale made by :func:`rationale_text`; other text is all findings.

    >>> split_rationale("CT image. Answer: CT. Check: A) CT? yes.")
    ('CT image.', ' Answer: CT. Check: A) CT? yes.')
    """
    for mark in (ANSWER_MARK, " The answer is "):
        k = rationale.rfind(mark)
        if k >= 0 and (mark != ANSWER_MARK or CHECK_MARK in rationale[k:]):
            return rationale[:k], rationale[k:]
    return rationale, ""


def restyle_rationale(rationale: str, options: list[str], answer_idx: int) -> str:
    """The same findings with the conclusion rewritten for ``options`` / ``answer_idx`` (after a reshuffle),
    in the style the rationale had; a rationale without a recognised conclusion is returned unchanged."""
    findings, conclusion = split_rationale(rationale)
    if conclusion.startswith(ANSWER_MARK):
        return rationale_text(findings, options, answer_idx, "verify")
    if conclusion:
        return rationale_text(findings, options, answer_idx, "answer")
    return rationale


def chat_item(rec: Mapping[str, Any], instruction: str = SHORT_INSTRUCTION, target: str = "",
              prefix: str = "") -> dict[str, Any]:
    """The one shape every model input is built from (SFT targets, GRPO prompts, R_φ items, evaluation): the
    record's image, its user turn (:func:`user_text`), the start of the assistant turn the model is given
    (``prefix``) and what it should write after it (``target``; ``""`` for a prompt to generate from).
    :mod:`medgr2.data.collate` turns a batch of them into model inputs."""
    return {"image": rec["image"], "prompt": user_text(rec, instruction), "prefix": prefix, "target": target}


def chat_messages(rec: Mapping[str, Any], instruction: str = SHORT_INSTRUCTION) -> list[dict[str, Any]]:
    """A one-turn chat (image + text) in the ``apply_chat_template`` message format of Qwen-VL processors."""
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": user_text(rec, instruction)}],
        }
    ]
