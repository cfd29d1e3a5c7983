"""Training batches of R_φ: :class:`RewardCollator` = the chat batch + the regression target and its labels.

:class:`~medgr2.training.scoring_collate.ScoringCollator` builds the same model inputs faster for scoring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medgr2.data.collate import ChatCollator


class RewardCollator:
    """:class:`ChatCollator` batch + ``target`` ``(B,)`` float (NaN where unknown), ``grade`` and ``source_id``
    lists (strings stay lists: validation groups by them)."""

    def __init__(self, processor, max_length: int | None = None):
        self.chat = ChatCollator(processor, max_length=max_length)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self.chat(items)
        batch["target"] = torch.tensor([float(it.get("score_target", math.nan)) for it in items])  # (B,)
        batch["grade"] = [str(it.get("grade", "")) for it in items]
        batch["source_id"] = [str(it.get("source_id", "")) for it in items]
        return batch
