"""How a VQA record becomes a chat turn and a target response (one place for every stage).

The user turn is the image, the question, the lettered options and an instruction; the assistant turn is
``<think>rationale</think><answer>X</answer>`` (Med-R1 / MedVLM-R1 format, DESIGN.md §4), or just
``<answer>X</answer>`` when the record has no rationale and ``think=False``.
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


def format_options(options: list[str]) -> str:
    """``["CT", "MRI"]`` -> ``"A) CT\\nB) MRI"``."""
    return "\n".join(f"{LETTERS[i]}) {opt}" for i, opt in enumerate(options))


def user_text(rec: Mapping[str, Any], instruction: str = SHORT_INSTRUCTION) -> str:
    """The text part of the user turn for a record (the image goes before it in the chat message)."""
    text = f"{rec['question']}\n{format_options(list(rec['options']))}"
    return f"{text}\n{instruction}" if instruction else text


def response_text(rationale: str | None, answer_letter: str, think: bool = True) -> str:
    """The assistant response: ``<think>…</think><answer>X</answer>`` (or answer only)."""
    if think:
        return f"<think>{(rationale or '').strip()}</think><answer>{answer_letter}</answer>"
    return f"<answer>{answer_letter}</answer>"


def chat_messages(rec: Mapping[str, Any], instruction: str = SHORT_INSTRUCTION) -> list[dict[str, Any]]:
    """A one-turn chat (image + text) in the ``apply_chat_template`` message format of Qwen-VL processors."""
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": user_text(rec, instruction)}],
        }
    ]
