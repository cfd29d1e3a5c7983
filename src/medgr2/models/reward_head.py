"""R_φ's regression head and the pooling of the backbone's last hidden states it reads (paper §3).

The head reads the backbone's last hidden state at the final non-pad position (``pooling="last"``, the usual
choice for a deep VLM), or the mean of the last hidden states over the response tokens (``"mean"``), or both
concatenated (``"last_mean"``). Measured on SynthMed with the 2-layer tiny VLM: last-token pooling plateaus
near held-out Spearman 0.5 (1,200 steps) while mean pooling passes 0.85 in the same steps — two layers are too
shallow to gather a whole response into one position — so the reward stage's default is ``mean``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RewardHead(nn.Module):
    """``(B, H) -> (B,)``: a linear layer, or a one-hidden-layer MLP when ``hidden > 0``.

    The last layer starts at zero so an untrained head predicts the target mean (no large initial loss
    that would push random gradients into a pretrained backbone).
    """

    def __init__(self, in_features: int, hidden: int = 0):
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(in_features, 1)
        last = self.net[-1] if isinstance(self.net, nn.Sequential) else self.net
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).squeeze(-1)  # (B, H) -> (B,)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the final non-pad position of each row, for left or right padding: ``(B, T) -> (B,)``."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)  # (B, T)
    return (positions * attention_mask.long()).argmax(dim=1)


POOLINGS = ("last", "mean", "last_mean")


def pool_hidden(hidden: Tensor, attention_mask: Tensor, response_mask: Tensor | None, pooling: str) -> Tensor:
    """``(B, T, H)`` last hidden states -> ``(B, H)`` (``last``/``mean``) or ``(B, 2H)`` (``last_mean``).

    ``response_mask`` ``(B, T)`` marks the response tokens averaged by ``mean``; None: every non-pad token.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_token_index(attention_mask)]  # (B, H)
    if pooling == "last":
        return last
    w = (response_mask if response_mask is not None else attention_mask).to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    mean = (hidden * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # (B, H)
    return mean if pooling == "mean" else torch.cat([last, mean], dim=-1)  # (B, 2H)
