"""Fast collation for R_φ scoring: :class:`ScoringCollator` makes the tensors of
:class:`~medgr2.training.reward_collate.RewardCollator`, bit for bit, at a fraction of the cost.

Scoring (``stage=score``, GRPO's R_φ term) spends much of its time turning items into tensors; this collator
checks that it reproduces the processor (see its docstring). :mod:`medgr2.training.prefetch` runs it one batch
ahead in a thread where that pays.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from medgr2.data.collate import IGNORE, MODEL_KEYS
from medgr2.training.reward_collate import RewardCollator
from medgr2.training.scoring_cache import ScoringCache

log = logging.getLogger(__name__)


class ScoringCollator:
    """What :class:`RewardScorer` collates with: the model inputs and response labels of :class:`RewardCollator`,
    bit for bit, at a fraction of the cost.

    Profiling ``stage=score`` on the tiny VLM put 27–52% of scoring time in collation, nearly all of it the
    processor's per-item Python work: a Jinja render of the chat template per item, the image processor's
    per-image PIL round trip (a resize to the size the image already has, then rescale, normalise, patchify),
    ``mm_token_type_ids`` built row by row in NumPy, and one tokenizer call per response for the labels. Here:

    * the chat template is rendered once and spliced around each prompt (checked on probe texts at start-up);
    * identical images (the G completions of one prompt, the graded variants of one question) are processed
      once per batch, and, when they need the processor, once per scoring call (:class:`ScoringCache`);
    * RGB images already at the processor's target size skip the PIL round trip: for the whole stack of them at
      once, the bytes are put in patch order and rescaled + normalised by a 256-entry table per channel, built
      with the processor's own dtypes and operation order (so the same floats); every other image goes
      through the processor itself;
    * texts are tokenized in batched calls to the tokenizer's backend, each response once and each distinct
      prompt once per call where that gives the same ids (:meth:`_token_ids`); token types, padding and labels
      are array ops.

    Nothing is taken on trust: the first batch is also collated by :class:`RewardCollator` and must match
    exactly (every model input and the labels), and each new image size of the vectorised path is checked
    once against the processor. A mismatch logs a warning and this collator falls back to
    :class:`RewardCollator` for good (or, for one image size, to the processor).
    """

    def __init__(self, processor):
        self.processor = processor
        self.tok = processor.tokenizer
        self.reference = RewardCollator(processor)
        self.enabled = True  # False after a failed self-check: every batch goes through the reference
        self._checked = False
        self._keys: tuple[str, ...] = ()
        self.image_token = getattr(processor, "image_token", None)
        mm = [getattr(processor, f"{m}_token", None) for m in ("image", "video", "audio")]
        self._mm_texts = [t for t in mm if t]
        self._mm_ids = [(1, getattr(processor, "image_token_ids", [])), (2, getattr(processor, "video_token_ids", [])),
                        (3, getattr(processor, "audio_token_ids", []))]
        ip = processor.image_processor
        self._merge = int(getattr(ip, "merge_size", 1) or 1)
        self._fast_sizes: dict[tuple[int, int], bool] = {}  # (w, h) -> vectorised path verified for that size
        self._lut_cache: np.ndarray | None = None
        self._atomic: tuple[str, ...] | None = None
        self._padding_side = self.tok.init_kwargs.get("padding_side") or self.tok.padding_side
        self._parts = self._template_parts()
        if self._parts is None or self.image_token is None:
            self.enabled = False

    # -------------------------------------------------------------------------------------------- text

    def _template_parts(self) -> tuple[str, str, str] | None:
        """``(before image token, between image token and prompt, after prompt)`` of the chat template, or None
        when the template is not a plain splice (then every batch uses the reference)."""
        chat = self.reference.chat
        sentinel = "\x00medgr2-prompt\x00"
        rendered = chat.prompt_text({"prompt": sentinel})
        if rendered.count(sentinel) != 1 or self.image_token is None:
            return None
        head, tail = rendered.split(sentinel)
        if head.count(self.image_token) != 1 or self.image_token in tail:
            return None
        pre, post = head.split(self.image_token)
        for probe in ("", "What is shown?\nA) CT\nB) MRI", "  {{ x }} {% if %} <b>&amp;</b> é 病变 \n\n"):
            if chat.prompt_text({"prompt": probe}) != head + probe + tail:
                return None
        return pre, post, tail

    def _plain(self, items: Sequence[Mapping[str, Any]]) -> bool:
        """No item text holds a multimodal placeholder (the processor would count it as one more image)."""
        text = "\x00".join(str(it.get(k, "")) for it in items for k in ("prompt", "prefix", "target"))
        return not any(t in text for t in self._mm_texts)

    # -------------------------------------------------------------------------------------------- images

    def _vectorisable(self, image: Image.Image) -> bool:
        """An 8-bit RGB image the processor would not resize (its target size is the image's own size)."""
        if image.mode != "RGB":
            return False
        ok = self._fast_sizes.get(image.size)
        if ok is not None:
            return ok
        ip = self.processor.image_processor
        resize = getattr(sys.modules.get(type(ip).__module__), "smart_resize", None)
        size = getattr(ip, "size", None) or {}
        supported = (
            resize is not None and getattr(ip, "do_resize", False) and getattr(ip, "do_rescale", False)
            and getattr(ip, "do_normalize", False) and getattr(ip, "do_convert_rgb", True) is not False
            and "shortest_edge" in size and "longest_edge" in size
        )
        if not supported:
            self._fast_sizes[image.size] = False
            return False
        w, h = image.size
        factor = int(ip.patch_size) * self._merge
        try:
            target = resize(h, w, factor=factor, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        except ValueError:  # extreme aspect ratio: the processor raises its own error on it
            target = None
        if target != (h, w):
            self._fast_sizes[image.size] = False
            return False
        # Checked once per size against the processor itself (its kwargs merge included).
        ok = self._same(self._vectorised([np.asarray(image)])[0], self._processed([image])[0])
        if not ok:
            log.warning("R_phi scoring: vectorised pixels differ from the processor's for %dx%d images; those "
                        "go through the processor", w, h)
        self._fast_sizes[image.size] = ok
        return ok

    @staticmethod
    def _same(a: tuple[Tensor, tuple], b: tuple[Tensor, tuple]) -> bool:
        return a[1] == b[1] and a[0].dtype == b[0].dtype and torch.equal(a[0], b[0])

    def _lut(self) -> np.ndarray:
        """``(256, C)`` float32: every 8-bit value rescaled and normalised per channel, as the processor does it.

        ``transformers``' NumPy path computes ``uint8 → float64 × rescale_factor → float32``, then
        ``(x - mean) / std`` in float32: a deterministic function of the byte value and the channel, so
        looking the result up is the same float as computing it per pixel.
        """
        if self._lut_cache is None:
            ip = self.processor.image_processor
            x = (np.arange(256, dtype=np.uint8).astype(np.float64) * ip.rescale_factor).astype(np.float32)
            mean = np.asarray(ip.image_mean, dtype=np.float32)
            std = np.asarray(ip.image_std, dtype=np.float32)
            self._lut_cache = (x[:, None] - mean) / std  # (256, C)
        return self._lut_cache

    def _vectorised(self, arrays: Sequence[np.ndarray]) -> list[tuple[Tensor, tuple[int, int, int]]]:
        """The image processor's rescale → normalise → patchify, on a stack of same-size ``(H, W, C)`` uint8 arrays.

        The bytes are put in the processor's patch order first (a cheap uint8 copy), then looked up in
        :meth:`_lut` straight into the float32 patches, temporal copies included.
        """
        ip = self.processor.image_processor
        p, m, t = int(ip.patch_size), self._merge, int(ip.temporal_patch_size)
        x = np.stack(arrays)  # (N, H, W, C) uint8
        n, h, w, c = x.shape
        gh, gw = h // p, w // p
        x = x.reshape(n, gh // m, m, p, gw // m, m, p, c)
        x = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 5, 7, 3, 6))  # (N, gh/m, gw/m, m, m, C, p, p) uint8
        out = np.empty((*x.shape[:6], t, p, p), dtype=np.float32)  # + the temporal copies
        lut = self._lut()
        for ch in range(c):  # a 256-entry table per channel: np.take is far cheaper than float maths per pixel
            out[:, :, :, :, :, ch] = lut[:, ch].take(x[:, :, :, :, :, ch])[:, :, :, :, :, None]
        flat = torch.from_numpy(out.reshape(n, gh * gw, c * t * p * p))
        return [(flat[i], (1, gh, gw)) for i in range(n)]

    def _processed(self, images: Sequence[Image.Image]) -> list[tuple[Tensor, tuple[int, int, int]]]:
        """Pixels and grids from the processor itself (its public call, so its own kwargs merge)."""
        out = self.processor(text=[self.image_token] * len(images), images=list(images), return_tensors="pt")
        grids = [tuple(int(v) for v in g) for g in out["image_grid_thw"]]
        sizes = [g[0] * g[1] * g[2] for g in grids]
        return list(zip(torch.split(out["pixel_values"], sizes), grids, strict=True))

    def _pixels(self, images: Sequence[Image.Image], cache: ScoringCache) -> list[tuple[Tensor, tuple[int, int, int]]]:
        """``(patches, grid)`` of every RGB image, in order: each distinct image processed once per batch, and
        once per ``cache`` when it goes through the processor."""
        raw = [im.tobytes() for im in images]  # one copy of the pixels: the content key and the array below
        keys = [(im.size, b) for im, b in zip(images, raw, strict=True)]
        found = {k: cache.get(k) for k in dict.fromkeys(keys)}
        todo = {k: i for i, k in enumerate(keys) if found[k] is None}  # first index of each new image
        by_size: dict[tuple[int, int], list[tuple]] = {}
        rest: list[tuple] = []
        for k, i in todo.items():
            (by_size.setdefault(images[i].size, []) if self._vectorisable(images[i]) else rest).append(k)
        for (w, h), ks in by_size.items():
            arrays = [np.frombuffer(raw[todo[k]], dtype=np.uint8).reshape(h, w, 3) for k in ks]
            for k, val in zip(ks, self._vectorised(arrays), strict=True):
                found[k] = val
        if rest:
            for k, val in zip(rest, self._processed([images[todo[k]] for k in rest]), strict=True):
                found[k] = val
                # Only the processor's results are kept for later batches: redoing a vectorised image costs
                # about what copying it into the cache would.
                cache.put(k, *val)
        return [found[k] for k in keys]

    # -------------------------------------------------------------------------------------------- batch

    def _encode(self, texts: Sequence[str], special: bool) -> list[list[int]]:
        """Token ids of ``texts``: the fast tokenizer's backend without offsets (the ids are the same)."""
        backend = self.tok.backend_tokenizer
        if backend.truncation is not None or backend.padding is not None:
            # Someone left truncation/padding switched on in the backend; the tokenizer's own call resets it.
            return list(self.tok(list(texts), add_special_tokens=special)["input_ids"])
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=special)]

    def _atomic_starts(self) -> tuple[str, ...]:
        """Added tokens that split any text at their position whatever surrounds them, when no special tokens
        are added around a sequence; else ``()`` (no text is split: every row is tokenized whole).

        A tokenizer cuts its input at added tokens before anything else and tokenizes the pieces alone, so a
        text cut right before such a token tokenizes to the concatenation of its two halves. Not so for a token
        that strips the whitespace before it (``lstrip``), matches only whole words (``single_word``), or is
        matched after a normaliser that sees both sides (``normalized`` with a normaliser).
        """
        if self._atomic is None:
            self._atomic = ()
            backend = getattr(self.tok, "backend_tokenizer", None)
            if backend is not None and self._encode(["a b"], True) == self._encode(["a b"], False):
                self._atomic = tuple(
                    t.content for t in backend.get_added_tokens_decoder().values()
                    if t.content and not t.lstrip and not t.single_word
                    and not (t.normalized and backend.normalizer is not None))
        return self._atomic

    def _token_ids(self, prompts: Sequence[str], targets: Sequence[str],
                   cache: ScoringCache) -> tuple[list[list[int]], list[int]]:
        """Token ids of each ``prompt + target`` and the number of tokens of each ``target`` alone.

        Where the target starts with an atomic added token (:meth:`_atomic_starts`; e.g. ``<think>``) the two
        are tokenized apart and joined, which gives the same ids: each response is tokenized once, not twice
        (once in the whole text, once alone for the labels), and a prompt shared by several responses once per
        call. Other rows are tokenized whole, as the processor does.
        """
        atomic = self._atomic_starts()
        split = [bool(atomic) and t.startswith(atomic) for t in targets]
        target_ids = self._encode(targets, False)
        ids: list[list[int]] = [[] for _ in prompts]
        halves = [i for i, ok in enumerate(split) if ok]
        if halves:
            prompt_ids = cache.prompt_ids([prompts[i] for i in halves], lambda t: self._encode(t, True))
            for i, pids in zip(halves, prompt_ids, strict=True):
                ids[i] = pids + target_ids[i]
        whole = [i for i, ok in enumerate(split) if not ok]
        if whole:
            for i, row in zip(whole, self._encode([prompts[i] + targets[i] for i in whole], True), strict=True):
                ids[i] = row
        return ids, [len(t) for t in target_ids]

    def _fast(self, items: Sequence[Mapping[str, Any]], cache: ScoringCache) -> dict[str, Tensor]:
        pre, post, tail = self._parts
        pixels = self._pixels(self.reference.chat.images(items), cache)  # RGB, resized as the reference does
        prompts, targets = [], []
        for it, (_, grid) in zip(items, pixels, strict=True):
            n_img = grid[0] * grid[1] * grid[2] // self._merge**2
            prompts.append(f"{pre}{self.image_token * n_img}{post}{it['prompt']}{tail}{it.get('prefix', '')}")
            targets.append(it["target"] + "<|im_end|>")
        ids, n_target = self._token_ids(prompts, targets, cache)
        B, T = len(ids), max(len(r) for r in ids)
        # Padding as the processor's tokenizer call pads (padding=True, its padding side).
        input_ids = np.full((B, T), self.tok.pad_token_id, dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        for i, row in enumerate(ids):
            span = slice(T - len(row), T) if self._padding_side == "left" else slice(0, len(row))
            input_ids[i, span] = row
            mask[i, span] = 1
        input_ids = torch.from_numpy(input_ids)
        batch: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": torch.from_numpy(mask)}
        if "mm_token_type_ids" in self._keys:
            types = torch.zeros_like(input_ids)
            for value, tids in self._mm_ids:
                for tid in tids or []:
                    if tid is not None:
                        types[input_ids == tid] = value
            batch["mm_token_type_ids"] = types
        batch["pixel_values"] = torch.cat([px for px, _ in pixels])
        batch["image_grid_thw"] = torch.tensor([g for _, g in pixels], dtype=torch.long)
        # Labels as ChatCollator sets them: the last len(tokens(target)) positions of each row.
        n = torch.tensor(n_target)
        response = torch.arange(T).unsqueeze(0) >= (T - n).unsqueeze(1)  # (B, T)
        batch["labels"] = torch.where(response, input_ids, torch.full_like(input_ids, IGNORE))
        return batch

    def _check(self, fast: Mapping[str, Tensor], ref: Mapping[str, Any]) -> bool:
        keys = [k for k in (*MODEL_KEYS, "labels") if k in ref]
        return set(keys) <= set(fast) and all(
            isinstance(ref[k], Tensor) and fast[k].dtype == ref[k].dtype and torch.equal(fast[k], ref[k]) for k in keys)

    def __call__(self, items: Sequence[Mapping[str, Any]], cache: ScoringCache | None = None) -> dict[str, Any]:
        """Model inputs + ``labels`` of ``items`` (the reference's batch on the first call and after a fallback)."""
        if not self.enabled or not self._plain(items):
            return self.reference(items)
        cache = cache if cache is not None else ScoringCache()
        if not self._checked:
            ref = self.reference(items)
            self._keys = tuple(k for k in MODEL_KEYS if k in ref)
            self._checked = True
            try:
                fast = self._fast(items, cache)
                ok = self._check(fast, ref)
            except Exception as err:  # noqa: BLE001 - any failure of the fast path means: use the reference
                log.warning("R_phi scoring: fast collation failed (%r); using the processor for every batch", err)
                ok = False
            if not ok:
                log.warning("R_phi scoring: fast collation does not reproduce the processor's batch; using the "
                            "processor for every batch")
                self.enabled = False
            return ref
        return self._fast(items, cache)
