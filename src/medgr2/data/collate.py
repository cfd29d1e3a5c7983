"""Turn chat items into model batches (one collator for pretraining, SFT, reward and evaluation).

An *item* is ``{"image": PIL, "prompt": str, "prefix": str, "target": str}``: the user turn's text (the
image goes first), an unlabelled start of the assistant turn and the labelled rest of it. Sequences are
left-padded (generation needs it; Qwen's M-RoPE positions follow the attention mask, so training does not
care), which puts every response at the right end: labels are the last ``len(target)+1`` tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from medgr2.data.prompting import SHORT_INSTRUCTION, chat_messages, response_text
from medgr2.data.schema import LETTERS

IGNORE = -100


def vqa_item(rec: Mapping[str, Any], instruction: str = SHORT_INSTRUCTION, think: bool = True) -> dict[str, Any]:
    """A VQA record as a training item: target ``<think>rationale</think><answer>X</answer>``."""
    return {
        "image": rec["image"],
        "prompt": _user_text(rec, instruction),
        "prefix": "",
        "target": response_text(rec.get("rationale", ""), rec["answer"], think=think),
    }


def _user_text(rec: Mapping[str, Any], instruction: str) -> str:
    return chat_messages(rec, instruction)[0]["content"][1]["text"]


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


class ChatCollator:
    """Callable collator: items -> tensors for ``Qwen2_5_VLForConditionalGeneration``.

    Besides the processor outputs it returns ``labels`` (-100 outside the target) and, when the target
    contains ``<answer>X``, ``letter_pos`` (index of the letter token, -1 if none) and ``letter_ids``
    (the token ids of A..D) so that modules can log the answer-letter loss and accuracy.
    """

    def __init__(self, processor, max_length: int | None = None, generation: bool = False):
        self.processor = processor
        self.tok = processor.tokenizer
        self.max_length = max_length
        self.generation = generation
        self.answer_id = self.tok.convert_tokens_to_ids("<answer>")
        if self.answer_id == self.tok.unk_token_id:
            self.answer_id = None
        self.letter_ids = torch.tensor([self._single_id(c) for c in LETTERS])
        self.eos = self.tok.convert_tokens_to_ids("<|im_end|>")

    def _single_id(self, text: str) -> int:
        ids = self.tok.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else -1

    def prompt_text(self, item: Mapping[str, Any]) -> str:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item["prompt"]}]}]
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        images = [to_rgb(it["image"]) for it in items]
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
        for i, tgt in enumerate(targets):
            # The target tokenizes the same alone as after the prompt: it starts with an atomic tag token.
            tgt_ids = self.tok.encode(tgt, add_special_tokens=False)
            n = len(tgt_ids)
            labels[i, T - n :] = input_ids[i, T - n :]
            if self.answer_id is not None and self.answer_id in tgt_ids:
                k = len(tgt_ids) - 1 - tgt_ids[::-1].index(self.answer_id)
                if k + 1 < n and int(input_ids[i, T - n + k + 1]) in self.letter_ids.tolist():
                    letter_pos[i] = T - n + k + 1
        batch["labels"] = labels
        batch["letter_pos"] = letter_pos
        batch["letter_ids"] = self.letter_ids
        return batch


MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The subset of a collated batch that the HF model's ``forward``/``generate`` accepts."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}
