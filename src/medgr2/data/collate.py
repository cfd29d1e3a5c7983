"""Turn chat items into model batches (one collator for pretraining, SFT, reward and evaluation).

An *item* is ``{"image": PIL, "prompt": str, "prefix": str, "target": str}``: the user turn's text (the
image goes first), an unlabelled start of the assistant turn and the labelled rest of it. Sequences are
left-padded (generation needs it; Qwen's M-RoPE positions follow the attention mask, so training does not
care), which puts every response at the right end: labels are the final tokens that hold target characters
(character offsets decide, so any tokenizer's merges are handled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from medgr2.data.prompting import SHORT_INSTRUCTION, chat_item
from medgr2.data.response_format import ANSWER_TAG, response_text
from medgr2.data.schema import LETTERS

IGNORE = -100


def vqa_item(rec: Mapping[str, Any], instruction: str = SHORT_INSTRUCTION, think: bool = True) -> dict[str, Any]:
    """A VQA record as a training item: target ``<think>rationale</think><answer>X</answer>``."""
    return chat_item(rec, instruction, target=response_text(rec.get("rationale", ""), rec["answer"], think=think))


def to_rgb(image: Any) -> Image.Image:
    """PIL image in RGB (grayscale, RGBA, 16-bit and palette images are converted)."""
    if isinstance(image, dict) and "bytes" in image:  # an undecoded datasets.Image value
        import io

        image = Image.open(io.BytesIO(image["bytes"]))
    if isinstance(image, str):
        image = Image.open(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # I;16B (big-endian TIFF) and float too
        import numpy as np

        arr = np.asarray(image, dtype=np.float32)
        arr = 255.0 * (arr - arr.min()) / max(float(arr.max() - arr.min()), 1.0)
        image = Image.fromarray(arr.astype("uint8"))
    return image.convert("RGB") if image.mode != "RGB" else image




def answer_letter_char(text: str) -> int:
    """Character index of the answer letter in ``text`` (the letter right after the last ``<answer>``), or -1."""
    cut = text.rfind(ANSWER_TAG)
    c = cut + len(ANSWER_TAG)
    return c if cut >= 0 and c < len(text) and text[c] in LETTERS else -1


def token_at_char(offsets: Sequence[tuple[int, int]], c: int) -> int:
    """Index of the token whose character span covers ``c`` (offset mapping), or -1."""
    for k, (a, b) in enumerate(offsets):
        if a <= c < b:
            return k
    return -1


def letter_slot(tok, text: str) -> tuple[int, list[int]] | None:
    """Where the answer letter of ``text`` sits under ``tok``'s own merges, and what each option would put there.

    Returns ``(k, ids)``: ``k`` the index of the token that holds the letter in ``tok(text)`` and ``ids[j]`` the
    token at ``k`` when the letter is ``LETTERS[j]`` (the same tokens before ``k`` for every letter). The tiny
    tokenizer gives the letter its own token (``B``); Qwen's merges it with the tag's ``>`` (``>B``): both are a
    slot of one token, found from character offsets rather than from an ``<answer>`` token id. ``None`` when
    ``text`` has no answer letter or the letters do not share the context before their token.
    """
    c = answer_letter_char(text)
    if c < 0:
        return None
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    k = token_at_char(enc["offset_mapping"], c)
    if k < 0:
        return None
    head, start = enc["input_ids"][:k], enc["offset_mapping"][k][0]
    ids = []
    for x in LETTERS:
        alt = tok(text[:c] + x + text[c + 1 :], add_special_tokens=False, return_offsets_mapping=True)
        if alt["input_ids"][:k] != head or len(alt["input_ids"]) <= k or alt["offset_mapping"][k][0] != start:
            return None
        ids.append(alt["input_ids"][k])
    return (k, ids) if len(set(ids)) == len(ids) else None


def _common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common suffix of two token-id lists."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class ChatCollator:
    """Callable collator: items -> tensors for ``Qwen2_5_VLForConditionalGeneration``.

    Besides the processor outputs it returns ``labels`` (-100 outside the target) and, when the target
    contains ``<answer>X``, ``letter_pos`` ``(B,)`` (index of the token holding the letter, -1 if none) and
    ``letter_ids`` ``(B, L)`` (the token each option letter A..D would put there, see :func:`letter_slot`) so
    that modules can log the answer-letter loss and accuracy under any tokenizer.
    Images are resized to ``processor.fixed_image_side`` first when it is set (``model.image_size``).
    """

    def __init__(self, processor, max_length: int | None = None, generation: bool = False):
        self.processor = processor
        self.tok = processor.tokenizer
        self.max_length = max_length
        self.generation = generation
        self.side = getattr(processor, "fixed_image_side", None)
        self.eos = self.tok.convert_tokens_to_ids("<|im_end|>")

    def prompt_text(self, item: Mapping[str, Any]) -> str:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item["prompt"]}]}]
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def images(self, items: Sequence[Mapping[str, Any]]) -> list[Image.Image]:
        """RGB images, resized to the pinned square side when there is one (exactly (side/28)^2 tokens each)."""
        images = [to_rgb(it["image"]) for it in items]
        if self.side:
            images = [im if im.size == (self.side, self.side) else
                      im.resize((self.side, self.side), Image.Resampling.BICUBIC) for im in images]
        return images

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        images = self.images(items)
        prompts = [self.prompt_text(it) + it.get("prefix", "") for it in items]
        if self.generation:
            return dict(self.processor(text=prompts, images=images, return_tensors="pt", padding=True))
        targets = [it["target"] + "<|im_end|>" for it in items]
        batch = dict(
            self.processor(text=[p + t for p, t in zip(prompts, targets, strict=True)], images=images,
                           return_tensors="pt", padding=True)
        )
        input_ids = batch["input_ids"]  # (B, T), left-padded
        T = input_ids.shape[1]
        labels = torch.full_like(input_ids, IGNORE)
        letter_pos = torch.full((len(items),), -1, dtype=torch.long)
        letter_ids = torch.full((len(items), len(LETTERS)), -1, dtype=torch.long)
        for i, (it, tgt) in enumerate(zip(items, targets, strict=True)):
            # The assistant turn (unlabelled prefix + target) is tokenized alone, with character offsets: they
            # say which tokens hold target characters (under Qwen's merges a boundary token may hold both prefix
            # and target, ``</think><answer>`` -> ``><``; it is labelled). Alone and after the prompt the tokens
            # agree except where the turn starts with whitespace that merges with the prompt's final newline
            # (a completion "\n\nB" -> one "\n\n\n" token): then only the agreeing tail maps, and the merged
            # token, which holds target characters, is labelled too.
            prefix = it.get("prefix", "")
            text = prefix + tgt
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            m = len(ids)
            agree = _common_suffix(input_ids[i].tolist(), ids)  # tokens that map one to one, from the right
            first = next((k for k, (_, b) in enumerate(offsets) if b > len(prefix)), m)
            start = T - m + first if first >= m - agree else T - agree - 1
            labels[i, start:] = input_ids[i, start:]
            slot = letter_slot(self.tok, text)
            if slot is not None and slot[0] >= max(first, m - agree):
                letter_pos[i] = T - m + slot[0]
                letter_ids[i] = torch.tensor(slot[1])
        batch["labels"] = labels
        batch["letter_pos"] = letter_pos
        batch["letter_ids"] = letter_ids
        return batch


MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The subset of a collated batch that the HF model's ``forward``/``generate`` accepts."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}
