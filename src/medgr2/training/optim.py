"""Optimizer and learning-rate schedule shared by every LightningModule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``.

    >>> warmup_cosine(0, 10, 100), warmup_cosine(10, 10, 100), round(warmup_cosine(100, 10, 100), 3)
    (0.1, 1.0, 0.1)
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_warmup_cosine(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, warmup_steps: int,
                        total_steps: int):
    """AdamW with a per-step warm-up/cosine schedule, Lightning-style.

    No 8-bit AdamW: on a GPU the large models train LoRA adapters (model.lora; QLoRA with quantization=4bit), whose
    optimizer states are small. The flag that once chose bitsandbytes' AdamW8bit was settable by no config and
    never run, so it was removed rather than kept untested.
    """
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup_steps, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
