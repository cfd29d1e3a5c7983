"""Image tokens and sequence lengths of a data x model config (``stage=inspect``): the memory a run will need.

Counts come from the model's own tokenizer and chat template and from Qwen's image-token rule under the model
config's pixel settings (``model.image_size`` / ``min_pixels`` / ``max_pixels``), reading only image headers.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from PIL import Image

from medgr2.models.processor import image_tokens

__all__ = ["image_hw", "sequence_stats", "format_sequence_stats"]


def image_hw(image: Any) -> tuple[int, int] | None:
    """(height, width) of a PIL image, a path or an undecoded ``{"bytes": ...}`` value; None if unreadable."""
    try:
        if isinstance(image, Image.Image):
            w, h = image.size
        elif isinstance(image, dict) and image.get("bytes") is not None:
            with Image.open(io.BytesIO(image["bytes"])) as im:
                w, h = im.size
        elif isinstance(image, dict) and image.get("path"):
            with Image.open(image["path"]) as im:
                w, h = im.size
        elif isinstance(image, str):
            with Image.open(image) as im:  # reads the header only
                w, h = im.size
        else:
            return None
    except (OSError, ValueError):
        return None
    return int(h), int(w)


def _summary(xs: list[int]) -> dict[str, float]:
    if not xs:
        return {"min": math.nan, "median": math.nan, "max": math.nan}
    return {"min": float(min(xs)), "median": float(statistics.median(xs)), "max": float(max(xs))}


def sequence_stats(records: Iterable[Mapping[str, Any]], processor, instruction: str, think: bool = True,
                   vocab_size: int | None = None, bytes_per_logit: int = 4) -> dict[str, Any]:
    """Image tokens per image and prompt+answer tokens per row (min / median / max), and the longest row.

    ``processor`` carries the pixel settings (:func:`medgr2.models.processor.load_processor`). The answer is the
    SFT target (``<think>rationale</think><answer>X</answer>``). ``logits_gb``: fp32 LM-head logits of the
    longest row over every position vs over its answer only (``vocab_size``: the LM head's rows, default the
    tokenizer's length) (what SFT computes since it keeps the answer window).
    Rows whose image cannot be read are counted in ``unreadable_images`` and left out.
    """
    from medgr2.data.collate import ChatCollator
    from medgr2.data.prompting import user_text
    from medgr2.data.response_format import response_text

    ip = processor.image_processor
    side = getattr(processor, "fixed_image_side", None)
    lo, hi = ip.size["shortest_edge"], ip.size["longest_edge"]
    tok = processor.tokenizer
    collate = ChatCollator(processor)
    img, seq, ans = [], [], []
    unreadable = 0
    longest: dict[str, Any] = {}
    for rec in records:
        hw = (side, side) if side else image_hw(rec.get("image"))
        if hw is None:
            unreadable += 1
            continue
        n_img = image_tokens(hw[0], hw[1], lo, hi)
        prompt = collate.prompt_text({"prompt": user_text(rec, instruction)})
        target = response_text(rec.get("rationale", ""), rec["answer"], think=think) + "<|im_end|>"
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"]) - 1 + n_img  # the pad token expands
        n_ans = len(tok(target, add_special_tokens=False)["input_ids"])
        img.append(n_img)
        seq.append(n_prompt + n_ans)
        ans.append(n_ans)
        if n_prompt + n_ans > longest.get("tokens", -1):
            longest = {"id": str(rec.get("id", "")), "tokens": n_prompt + n_ans, "image_tokens": n_img,
                       "answer_tokens": n_ans, "image_hw": list(hw)}
    vocab = int(vocab_size or len(tok))
    out: dict[str, Any] = {"rows": len(seq), "unreadable_images": unreadable, "image_tokens": _summary(img),
                           "sequence_tokens": _summary(seq), "answer_tokens": _summary(ans), "longest": longest,
                           "pixels": {"image_size": side, "min_pixels": lo, "max_pixels": hi}, "vocab": vocab}
    if longest:
        out["logits_gb"] = {"full": longest["tokens"] * vocab * bytes_per_logit / 1e9,
                            "answer_only": (longest["answer_tokens"] + 1) * vocab * bytes_per_logit / 1e9}
    return out


def format_sequence_stats(s: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`sequence_stats`."""
    lines = [f"Sequence lengths ({s['rows']} rows; pixels: image_size={s['pixels']['image_size']}, "
             f"min_pixels={s['pixels']['min_pixels']}, max_pixels={s['pixels']['max_pixels']})",
             f"{'':<22}{'min':>8}{'median':>10}{'max':>8}"]
    for key, name in (("image_tokens", "image tokens / image"), ("answer_tokens", "answer tokens"),
                      ("sequence_tokens", "prompt+answer tokens")):
        v = s[key]
        lines.append(f"{name:<22}{v['min']:>8.0f}{v['median']:>10.1f}{v['max']:>8.0f}")
    if s.get("longest"):
        lg, gb = s["longest"], s["logits_gb"]
        lines.append(f"longest row: {lg['tokens']} tokens (id {lg['id']}, image {lg['image_hw'][0]}x"
                     f"{lg['image_hw'][1]} -> {lg['image_tokens']} tokens); fp32 logits over vocab {s['vocab']}: "
                     f"{gb['full']:.3f} GB every position, {gb['answer_only']:.3f} GB answer only")
    if s["unreadable_images"]:
        lines.append(f"unreadable images (left out): {s['unreadable_images']}")
    return "\n".join(lines)
