"""One processor path for every Qwen2.5-VL checkpoint folder (the tiny one and the real 3B/7B alike).

transformers' ``Qwen2_5_VLProcessor`` always builds a video processor, and that needs torchvision, which does
not import beside the CPU torch wheel. So:

- where torchvision imports (a GPU install: ``pip install -e '.[gpu]'``), ``AutoProcessor.from_pretrained`` —
  transformers' own processor, exactly what the checkpoint names;
- where it does not, :class:`ImageOnlyQwen2_5_VLProcessor`: the same class without a video processor, loading
  the same tokenizer, chat template and ``preprocessor_config.json`` with the PIL image processor.

Image resolution is set here, in Qwen's terms (``min_pixels`` / ``max_pixels``), or pinned with a square side
(``image_size``): the collator then resizes every image to that side first, so each image gives exactly
``(side / 28) ** 2`` tokens whatever its size or aspect ratio (pinning min = max pixels alone does not: Qwen's
rounding keeps the aspect ratio and drops tokens).
"""

from __future__ import annotations

import importlib.util
import logging
import math

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLProcessor

log = logging.getLogger(__name__)

PATCH = 14  # Qwen2.5-VL's vision patch side in pixels
MERGE = 2  # 2x2 patches are merged into one LM token
FACTOR = PATCH * MERGE  # 28: one image token covers 28x28 pixels


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without a video processor (which would need torchvision).

    Registered with ``AutoProcessor`` so that folders saved with it (the tiny model) load back through
    ``AutoProcessor`` too: without that registration transformers silently falls back to a bare tokenizer and
    images are dropped.
    """

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    # ProcessorMixin type-checks every attribute it knows; this one has no video processor.
    @classmethod
    def get_attributes(cls) -> list[str]:  # pragma: no cover - exercised through from_pretrained
        return ["image_processor", "tokenizer"]


def register_processor() -> None:
    """Make ``AutoProcessor`` resolve Qwen2.5-VL configs saved with :class:`ImageOnlyQwen2_5_VLProcessor`."""
    AutoProcessor.register(Qwen2_5_VLConfig, ImageOnlyQwen2_5_VLProcessor, exist_ok=True)


def torchvision_available() -> bool:
    """Whether torchvision can be imported (it is absent beside the CPU torch wheel)."""
    return importlib.util.find_spec("torchvision") is not None


def square_side(image_size: int) -> int:
    """``image_size`` rounded to a multiple of 28 (at least 28): the side every image is resized to."""
    return max(FACTOR, round(image_size / FACTOR) * FACTOR)


def image_tokens(height: int, width: int, min_pixels: int, max_pixels: int) -> int:
    """LM tokens for one image of ``height`` x ``width`` under Qwen's ``smart_resize`` (patch 14, merge 2)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # no torchvision

    h, w = smart_resize(height, width, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    return (h // FACTOR) * (w // FACTOR)


def set_resolution(processor, image_size: int | None = None, min_pixels: int | None = None,
                   max_pixels: int | None = None) -> None:
    """Apply ``model.image_size`` or ``model.min_pixels`` / ``model.max_pixels`` to a loaded processor.

    ``image_size`` wins: images are resized to ``square_side(image_size)`` by the collator (it reads
    ``processor.fixed_image_side``) and min = max pixels = side², so every image gives (side/28)² tokens.
    """
    ip = processor.image_processor
    if image_size:
        side = square_side(image_size)
        min_pixels = max_pixels = side * side
        processor.fixed_image_side = side
    else:
        processor.fixed_image_side = None
    lo = min_pixels if min_pixels is not None else ip.size["shortest_edge"]
    hi = max_pixels if max_pixels is not None else ip.size["longest_edge"]
    if lo > hi:
        raise ValueError(f"model.min_pixels ({lo}) > model.max_pixels ({hi})")
    ip.size = {"shortest_edge": int(lo), "longest_edge": int(hi)}
    for name, value in (("min_pixels", lo), ("max_pixels", hi)):
        if hasattr(ip, name):  # older image processors keep both spellings; keep them equal
            setattr(ip, name, int(value))


def load_processor(path: str, image_size: int | None = None, min_pixels: int | None = None,
                   max_pixels: int | None = None, trust_remote_code: bool = False):
    """The processor of a checkpoint folder (see the module docstring); fails loudly if images would be dropped."""
    register_processor()
    if torchvision_available() or trust_remote_code:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    else:
        processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(path)
    if not hasattr(processor, "image_processor"):
        raise TypeError(
            f"AutoProcessor.from_pretrained({path!r}) returned {type(processor).__name__} without an image "
            "processor; images would be dropped. Is this a vision-language checkpoint?"
        )
    set_resolution(processor, image_size, min_pixels, max_pixels)
    tok = processor.tokenizer
    tok.padding_side = "left"  # generation needs left padding; training collators pad explicitly
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return processor


def max_image_tokens(processor) -> int:
    """Upper bound of image tokens per image under the processor's current pixel settings."""
    return int(math.floor(processor.image_processor.size["longest_edge"] / (FACTOR * FACTOR)))
