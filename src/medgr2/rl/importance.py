"""Truncated importance sampling for rollouts sampled by another engine (vLLM), TRL semantics.

A vLLM engine samples the rollouts with its own kernels (bf16, other attention, a weight push behind), so the
distribution it sampled, ``pi_sampler``, is not exactly the policy ``pi_old`` the loss assumes. TRL's
``vllm_importance_sampling_correction`` weights every completion token's loss by the ratio of the two, capped
(``vllm_importance_sampling_cap``) so that a token the sampler found unlikely cannot blow the update up::

    w_t = min(exp(logp_old_t - logp_sampler_t), cap)        # no gradient: both log-probs are detached

``logp_old`` is the policy's log-prob at the rollout's first use (the detached current log-probs when on-policy).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["importance_weight_stats", "truncated_importance_weights"]


def truncated_importance_weights(old_logps: Tensor, sampler_logps: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Per-token weights ``min(exp(old_logps - sampler_logps), cap)``; 1 on padding and where the sampler's
    log-prob is unknown (NaN: a stop token vLLM did not score), as TRL's ``nan_to_num`` does.

    old_logps, sampler_logps, mask: (N, T) -> (N, T) float weights, detached.

    >>> truncated_importance_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[-1.0, 0.5]]), torch.ones(1, 2), 2.0)
    tensor([[2.0000, 0.6065]])
    """
    if not (old_logps.shape == sampler_logps.shape == mask.shape):
        raise ValueError(f"shapes differ: old {tuple(old_logps.shape)}, sampler {tuple(sampler_logps.shape)}, "
                         f"mask {tuple(mask.shape)}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    with torch.no_grad():
        ok = mask.bool() & torch.isfinite(sampler_logps)  # (N, T)
        diff = (old_logps.detach().float() - sampler_logps.float()).masked_fill(~ok, 0.0)  # (N, T)
        return diff.exp().clamp(max=cap)  # (N, T)


def importance_weight_stats(old_logps: Tensor, sampler_logps: Tensor, mask: Tensor, cap: float) -> dict[str, Tensor]:
    """Statistics of the *uncapped* ratio over the scored completion tokens (0-dim tensors, detached):
    ``is_ratio_mean`` / ``is_ratio_min`` / ``is_ratio_max`` and ``is_capped_frac`` (share of tokens above ``cap``).
    NaN when no token has a sampler log-prob."""
    with torch.no_grad():
        ok = mask.bool() & torch.isfinite(sampler_logps)  # (N, T)
        if not bool(ok.any()):
            nan = torch.tensor(float("nan"), device=old_logps.device)
            return {"is_ratio_mean": nan, "is_ratio_min": nan, "is_ratio_max": nan, "is_capped_frac": nan}
        ratio = (old_logps.detach().float() - sampler_logps.float())[ok].exp()  # (M,)
        return {"is_ratio_mean": ratio.mean(), "is_ratio_min": ratio.min(), "is_ratio_max": ratio.max(),
                "is_capped_frac": (ratio > cap).float().mean()}
