"""The clipped GRPO surrogate loss, numerically matching TRL ``GRPOTrainer`` (v1.16) on one process.

Per completion token ``t`` of sequence ``b``::

    c1 = exp(logp - old_logp)                          # importance ratio
    c2 = clamp(c1, 1 - eps_low, 1 + eps_high)
    loss_tok = -min(c1 * A_b, c2 * A_b) + beta * kl    # kl = exp(ref - logp) - (ref - logp) - 1  (k3)

and the token losses are reduced by one of TRL's ``loss_type`` aggregations (see :func:`grpo_loss`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LOSS_TYPES", "grpo_loss", "grpo_loss_with_stats"]

LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")


def _check_inputs(
    logps: Tensor,
    old_logps: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float,
    epsilon_high: float,
    beta: float,
    loss_type: str,
    max_completion_length: int | None,
) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if logps.dim() != 2:
        raise ValueError(f"logps must be (B, T), got shape {tuple(logps.shape)}")
    for name, t in (("old_logps", old_logps), ("ref_logps", ref_logps), ("mask", mask)):
        if t is not None and t.shape != logps.shape:
            raise ValueError(
                f"{name} must have the shape of logps {tuple(logps.shape)}, got {tuple(t.shape)}"
            )
    if advantages.shape != (logps.shape[0],):
        raise ValueError(f"advantages must be (B,) = ({logps.shape[0]},), got {tuple(advantages.shape)}")
    if epsilon_low < 0 or epsilon_high < 0:
        raise ValueError(f"epsilons must be >= 0, got low={epsilon_low}, high={epsilon_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logps is None:
        raise ValueError("ref_logps is required when beta > 0 (the KL term needs the reference policy)")
    if loss_type == "dr_grpo" and (max_completion_length is None or max_completion_length < 1):
        raise ValueError(
            "loss_type='dr_grpo' needs max_completion_length (a positive int): it normalises by "
            "B * max_completion_length, a constant, not by the padded length of this batch"
        )


def grpo_loss_with_stats(
    logps: Tensor,
    old_logps: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss plus diagnostics. Arguments as in :func:`grpo_loss`; ``token_weights`` (B, T), detached,
    multiplies each token's clipped surrogate before the KL term is added (TRL's vLLM importance-sampling
    correction, :mod:`medgr2.rl.importance`).

    Returns:
        ``(loss, stats)``: ``loss`` is a 0-dim tensor with grad; ``stats`` holds detached 0-dim tensors
        (kept on the device so logging them does not force a host sync every step):

        - ``clip_fraction``: share of active tokens in TRL's clipped region, where the clipped branch was
          taken and the token gives no gradient (``ratio < 1-eps_low and A < 0`` or
          ``ratio > 1+eps_high and A > 0``); ``low_clip_fraction`` / ``high_clip_fraction`` split it.
        - ``ratio_mean``: mean importance ratio over active tokens (1 on-policy).
        - ``kl``: mean k3 KL to the reference over active tokens (only when ``beta > 0``).
    """
    if epsilon_high is None:
        epsilon_high = epsilon_low
    _check_inputs(
        logps,
        old_logps,
        ref_logps,
        advantages,
        mask,
        epsilon_low,
        epsilon_high,
        beta,
        loss_type,
        max_completion_length,
    )
    # On-policy (num_iterations=1) the old policy *is* the current one: ratio == 1 in value but still
    # carries d ratio / d logp = 1, which is what makes the surrogate's gradient the policy gradient.
    if old_logps is None:
        old_logps = logps.detach()
    mask = mask.to(logps.dtype)  # (B, T) 1 = completion token, 0 = padding / after EOS
    adv = advantages.to(logps.dtype).unsqueeze(1)  # (B, 1) broadcast over tokens

    coef_1 = torch.exp(logps - old_logps)  # (B, T)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)  # (B, T)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)  # (B, T)
    if token_weights is not None:
        if token_weights.shape != logps.shape:
            raise ValueError(f"token_weights must have the shape of logps {tuple(logps.shape)}, "
                             f"got {tuple(token_weights.shape)}")
        per_token_loss = per_token_loss * token_weights.detach().to(logps.dtype)  # (B, T)

    per_token_kl = None
    if beta > 0:
        assert ref_logps is not None  # checked above; narrows the type
        delta = ref_logps - logps  # (B, T)
        per_token_kl = torch.exp(delta) - delta - 1  # (B, T) k3 estimator: >= 0, unbiased for KL(pi||ref)
        per_token_loss = per_token_loss + beta * per_token_kl

    masked_sum = (per_token_loss * mask).sum()
    n_active = mask.sum().clamp(min=1.0)  # clamp: an all-padding batch gives loss 0, not NaN
    if loss_type == "grpo":
        # each sequence weighs the same whatever its length -> long completions get smaller per-token grads
        loss = ((per_token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked_sum / n_active
    elif loss_type == "dr_grpo":
        # constant normaliser removes the length bias of "grpo" (Dr. GRPO, Liu et al. 2025)
        assert max_completion_length is not None
        loss = masked_sum / (logps.shape[0] * max_completion_length)
    else:  # "dapo"
        # TRL divides by the active tokens of the *global* batch / num_processes; on one process that is
        # mask.sum(), i.e. identical to "bnpo". Under DDP pass num_items_in_batch = global tokens / world size.
        norm = (
            n_active if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=logps.dtype)
        )
        loss = masked_sum / norm

    with torch.no_grad():
        is_low = (coef_1 < 1 - epsilon_low) & (adv < 0)  # (B, T)
        is_high = (coef_1 > 1 + epsilon_high) & (adv > 0)  # (B, T)

        def masked_mean(x: Tensor) -> Tensor:
            return (x.to(logps.dtype) * mask).sum() / n_active

        stats = {
            "clip_fraction": masked_mean(is_low | is_high),
            "low_clip_fraction": masked_mean(is_low),
            "high_clip_fraction": masked_mean(is_high),
            "ratio_mean": masked_mean(coef_1),
        }
        if per_token_kl is not None:
            stats["kl"] = masked_mean(per_token_kl)
    return loss, stats


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
) -> Tensor:
    """Clipped GRPO surrogate loss (scalar), TRL ``GRPOTrainer`` semantics on one process.

    Args:
        logps: (B, T) log-probs of the sampled completion tokens under the current policy (with grad;
            logits already divided by the sampling temperature).
        old_logps: (B, T) log-probs under the policy that sampled the completions, or ``None`` when
            on-policy (``num_iterations=1``): then ``logps.detach()`` is used.
        ref_logps: (B, T) log-probs under the frozen reference; may be ``None`` only when ``beta == 0``.
        advantages: (B,) one advantage per completion (see :func:`~medgr2.rl.advantages.group_advantages`).
        mask: (B, T) 1 for completion tokens, 0 for padding (bool or float).
        epsilon_low: lower clip ``1 - eps_low``.
        epsilon_high: upper clip ``1 + eps_high``; defaults to ``epsilon_low`` (DAPO "clip-higher" sets it
            larger).
        beta: weight of the k3 KL penalty to the reference.
        loss_type: token aggregation:

            - ``"grpo"``: mean over sequences of (masked token sum / that sequence's token count, min 1);
            - ``"bnpo"``: masked sum / total active tokens (min 1);
            - ``"dr_grpo"``: masked sum / (B * ``max_completion_length``). ``max_completion_length`` is
              required (ValueError otherwise): we do *not* fall back to ``T``, because ``T`` is the padded
              length of this batch and varies between batches, which would bring back the length bias
              Dr. GRPO removes;
            - ``"dapo"``: masked sum / active tokens of the global batch. On one process this equals
              ``"bnpo"``; under data parallelism pass ``num_items_in_batch`` (global active tokens divided by
              the number of processes, as TRL does).
        max_completion_length: generation budget in tokens, used by ``"dr_grpo"`` only.
        num_items_in_batch: optional ``"dapo"`` normaliser override (see above).

    Returns:
        0-dim loss tensor.

    Raises:
        ValueError: on an unknown ``loss_type``, mismatched shapes, negative epsilons/beta, missing
            ``ref_logps`` with ``beta > 0`` or missing ``max_completion_length`` with ``"dr_grpo"``.
    """
    loss, _ = grpo_loss_with_stats(
        logps,
        old_logps,
        ref_logps,
        advantages,
        mask,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        beta=beta,
        loss_type=loss_type,
        max_completion_length=max_completion_length,
        num_items_in_batch=num_items_in_batch,
    )
    return loss
