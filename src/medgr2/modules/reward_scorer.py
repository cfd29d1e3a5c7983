"""Batched, no-grad R_φ scoring of records or items: what the score stage, GRPO's R_φ term and the held-out
figures call. It loads an export with :func:`~medgr2.modules.reward.load_reward_model` (or takes a module) and
collates with :class:`~medgr2.training.scoring_collate.ScoringCollator`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medgr2.data.reward_items import reward_item
from medgr2.modules.reward import RewardRegressor, load_reward_model
from medgr2.training.prefetch import prefetch_default, prefetched
from medgr2.training.scoring_cache import ScoringCache
from medgr2.training.scoring_collate import ScoringCollator


class RewardScorer:
    """Batched, no-grad, deterministic R_φ scoring: ``RewardScorer(path).score(records) -> [float]``.

    ``records_or_items``: schema records (scored on their ``response`` column, else on their reference
    rationale + answer), or chat items ``{image, prompt, target}`` — see :func:`reward_item`. Scores come
    back in input order. Eval mode (no dropout) and a fixed per-sequence computation make them
    independent of the batch they were in up to float rounding (left padding is masked; M-RoPE
    positions follow the attention mask).

    Batches are built by :class:`ScoringCollator` (the same tensors as :class:`RewardCollator`, cheaper).
    ``prefetch`` collates the next batch in a second Python thread while the model runs the current one:
    ``None`` (default) turns it on for a model on an accelerator, off on CPU (:func:`prefetch_default`);
    scores are the same either way (same batches, same order).
    """

    def __init__(self, path_or_module: str | Path | RewardRegressor, device: str | torch.device | None = None,
                 batch_size: int = 32, prefetch: bool | None = None):
        if isinstance(path_or_module, RewardRegressor):
            self.module = path_or_module
        else:
            self.module = load_reward_model(path_or_module, device)
        self.path = None if isinstance(path_or_module, RewardRegressor) else str(path_or_module)
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.collate = ScoringCollator(self.module.processor)

    @property
    def instruction(self) -> str:
        return self.module.instruction

    def items(self, records_or_items: Iterable[Mapping[str, Any]], response_key: str = "response"):
        """Reward items built exactly as in training (same instruction, same letter resolution)."""
        for rec in records_or_items:
            yield reward_item(rec, self.instruction, response_key, self.module.resolve_letter)

    def batches(self, records_or_items: Iterable[Mapping[str, Any]], batch_size: int,
                response_key: str = "response") -> Iterator[tuple[int, dict[str, Any]]]:
        """``(n_items, collated batch)`` for consecutive runs of ``batch_size`` items, in order."""
        cache = ScoringCache()  # per call: repeats across calls (e.g. a benchmark's rounds) are not reused
        buf: list[dict[str, Any]] = []
        for item in self.items(records_or_items, response_key):
            buf.append(item)
            if len(buf) == batch_size:
                yield len(buf), self.collate(buf, cache)
                buf = []
        if buf:
            yield len(buf), self.collate(buf, cache)

    @torch.no_grad()
    def score(self, records_or_items: Iterable[Mapping[str, Any]], batch_size: int | None = None,
              progress: bool = False, response_key: str = "response", prefetch: bool | None = None) -> list[float]:
        """R_φ score (grade scale) of every record/item, in order.

        ``prefetch`` overrides the scorer's setting for this call (see the class docstring).
        """
        from tqdm.auto import tqdm

        bs = int(batch_size or self.batch_size)
        use_thread = prefetch if prefetch is not None else self.prefetch
        device = next(self.module.parameters()).device
        if use_thread is None:
            use_thread = prefetch_default(device)
        was_training = self.module.training
        self.module.eval()
        total = len(records_or_items) if hasattr(records_or_items, "__len__") else None
        bar = tqdm(total=total, desc="R_phi scoring", unit="item", disable=not progress)
        out: list[float] = []
        batches = self.batches(records_or_items, bs, response_key)
        if use_thread:
            batches = prefetched(batches, torch.get_num_threads())
        try:
            for n, batch in batches:
                batch = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
                out.extend(self.module(batch).float().cpu().tolist())  # (B,)
                bar.update(n)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            bar.close()
            self.module.train(was_training)
        return out
