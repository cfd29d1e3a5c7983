"""What one R_φ scoring call has already computed (image pixels, prompt token ids), for its later batches."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor

#: Bytes of pixel values :class:`ScoringCache` keeps per :meth:`RewardScorer.score` call (the G completions of
#: one prompt, or the graded variants of one question, reuse one image; far-apart repeats are not worth the memory).
PIXEL_CACHE_BYTES = 64 * 2**20
#: Tokenized prompts :class:`ScoringCache` keeps per call (token-id lists: small).
PROMPT_CACHE_ITEMS = 4096


class ScoringCache:
    """What one :meth:`RewardScorer.score` call has already computed, for its later batches (never across calls).

    * ``pixels``: the processor-made pixel values of images, least recently used out past ``max_bytes``. Keyed
      by the image's size and its RGB bytes themselves: a dict compares keys in full, so only identical pixels
      share an entry, whatever Python object carries them (a ``datasets`` row decodes a new one each time).
    * ``prompts``: token ids of prompt texts (everything before the response), least recently used out past
      ``max_prompts``.
    """

    def __init__(self, max_bytes: int = PIXEL_CACHE_BYTES, max_prompts: int = PROMPT_CACHE_ITEMS):
        self.max_bytes = int(max_bytes)
        self.max_prompts = int(max_prompts)
        self.pixels: OrderedDict[tuple, tuple[Tensor, tuple[int, int, int]]] = OrderedDict()
        self.prompts: OrderedDict[str, list[int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> tuple[Tensor, tuple[int, int, int]] | None:
        """Pixels and grid of the image with content ``key``, or None."""
        hit = self.pixels.get(key)
        if hit is not None:
            self.pixels.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return hit

    def put(self, key: tuple, patches: Tensor, grid: tuple[int, int, int]) -> None:
        """Keep an image's pixels; the least recently used go once ``max_bytes`` is passed."""
        size = patches.numel() * patches.element_size() + len(key[-1])
        if size > self.max_bytes:
            return
        if patches.untyped_storage().nbytes() > patches.numel() * patches.element_size():
            # A view into a whole batch's pixels would keep all of them alive and out of the byte count.
            patches = patches.clone()
        self.pixels[key] = (patches, grid)
        self._bytes += size
        while self._bytes > self.max_bytes:
            old_key, (old, _) = self.pixels.popitem(last=False)
            self._bytes -= old.numel() * old.element_size() + len(old_key[-1])

    def prompt_ids(self, texts: Sequence[str], encode) -> list[list[int]]:
        """Token ids of ``texts`` (``encode(list of new texts)`` for the ones not seen yet), in order."""
        new = [t for t in dict.fromkeys(texts) if t not in self.prompts]
        for t, ids in zip(new, encode(new) if new else [], strict=True):
            self.prompts[t] = ids
        out = []
        for t in texts:
            self.prompts.move_to_end(t)
            out.append(self.prompts[t])
        while len(self.prompts) > self.max_prompts:
            self.prompts.popitem(last=False)
        return out
