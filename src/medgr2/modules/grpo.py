"""GRPO policy (paper §3 "Stage 2", Eq. 3): G sampled rollouts per prompt, group-relative advantages, clipped loss.

One rollout batch of B VQA records (prompts), then ``num_iterations`` (TRL's mu) optimizer steps on it, all in
one Lightning ``training_step`` (so every dataloader batch is used, and an epoch covers every prompt):

1. **Rollouts** (no grad, :mod:`medgr2.modules.grpo_rollouts`): ``expand`` (default), ``repeat`` or ``vllm``.
2. **Rewards** (host, :mod:`medgr2.modules.grpo_rewards`): ``alpha * R_phi + beta_match * match (+ format)``.
3. **Advantages** by :func:`medgr2.rl.group_advantages` (TRL semantics; ``scale_rewards=batch`` divides by the
   std of the rewards of all ranks).
4. **Loss**: one forward over the N prompt+completion sequences, :func:`medgr2.rl.grpo_loss_with_stats`. On-policy
   the old log-probs are the current ones detached; rollouts from vLLM weight each token's loss by the truncated
   importance ratio policy/sampler (:mod:`medgr2.rl.importance`).

Manual optimization: a batch with NaN rewards is skipped without an update; with ``skip_zero_advantage`` so is a
batch whose advantages are all 0 (AdamW's momentum would move every weight by about lr with no signal).
Every knob and its default: :class:`medgr2.configs.grpo.GRPOConfig`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from medgr2.configs.grpo import GRPOConfig
from medgr2.configs.training import OptimConfig
from medgr2.data.collate import ChatCollator
from medgr2.modules.grpo_rewards import (
    HackingMonitor,
    RewardFn,
    RewardHackingWarning,
    reward_model_fn,
    score_completions,
)
from medgr2.modules.grpo_rollouts import RolloutMixin, Rollouts, completion_mask, sample_tokens
from medgr2.modules.sft import VLMModule
from medgr2.rl.advantages import global_reward_std, group_advantages
from medgr2.rl.diagnostics import group_std, zero_advantage_fraction
from medgr2.rl.difficulty import informative_fraction, informative_groups, kept_rows
from medgr2.rl.importance import importance_weight_stats, truncated_importance_weights
from medgr2.rl.loss import grpo_loss_with_stats
from medgr2.rl.preference_pairs import pairwise_ranking_accuracy
from medgr2.training import sharding
from medgr2.training.vllm_rollouts import VLLMRollouts, require_vllm

__all__ = ["GRPOConfig", "GRPOPolicy", "HackingMonitor", "RewardFn", "RewardHackingWarning", "Rollouts",
           "completion_mask", "reward_model_fn", "sample_tokens"]

log = logging.getLogger(__name__)


class GRPOPolicy(RolloutMixin, VLMModule):
    """GRPO on VQA records with the MedGR2 composite reward (see the module docstring for one step).

    The batch is a list of VQA records (the dataloader's ``collate_fn`` is ``list``). ``rm_fn`` (an attribute,
    not an init argument, so it is neither saved as a hyperparameter nor pickled into checkpoints) scores the
    completions with ``R_phi``; ``None`` means no reward model (alpha term 0). It is built from
    ``reward_model`` (a path) when that is given.

    Args:
        model / weights / lora: as :class:`VLMModule`.
        config: every GRPO setting (:class:`GRPOConfig`); None: the defaults.
        **overrides: flat GRPO keys (``lr=..., temperature=...``) applied on top of ``config``; an unknown key
            is an error. Hyperparameters are saved flat, so a checkpoint rebuilds the module.
    """

    def __init__(self, model: dict[str, Any], weights: str | None = None, config: GRPOConfig | None = None,
                 lora: bool | None = None, **overrides: Any):
        cfg = config or GRPOConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        if cfg.rollout.rollout == "vllm":
            require_vllm()  # fail before the model is loaded, in one line
        # Lightning collects this frame's arguments as hyperparameters: keep the dataclass out of them (checkpoints
        # load with weights_only=True); the flat values are saved below.
        config = None  # noqa: F841
        super().__init__(model, weights=weights, optim=OptimConfig(
            lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, total_steps=cfg.total_steps),
            lora=lora)
        # Flat plain values only: checkpoints load with weights_only=True and rebuild the module from them.
        self.save_hyperparameters({"model": model, "weights": weights, "lora": lora, **cfg.to_flat()},
                                  logger=False)
        self.cfg = cfg
        self.automatic_optimization = False
        self.G = int(cfg.rollout.num_generations)
        tok = self.processor.tokenizer
        self.collate = ChatCollator(self.processor, generation=True)
        self.pad_id = int(tok.pad_token_id)
        eos = {int(tok.convert_tokens_to_ids("<|im_end|>"))}
        gen_eos = getattr(self._hf().generation_config, "eos_token_id", None)
        eos.update([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))
        self.register_buffer("eos_ids", torch.tensor(sorted(eos)), persistent=False)
        self.is_peft = hasattr(self.model, "disable_adapter")
        # Reference policy for the KL term: LoRA -> the same weights with adapters off; else a frozen copy.
        self.ref_model = None
        if cfg.loss.beta > 0 and not self.is_peft:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        rc = cfg.reward
        self.rm_fn: RewardFn | None = (reward_model_fn(rc.reward_model, cfg.rollout.instruction,
                                                       rc.reward_batch_size) if rc.reward_model else None)
        self.monitor = HackingMonitor(cfg.hacking_window, cfg.hacking_threshold)
        self.history: list[dict[str, float]] = []  # per-step diagnostics (host floats), for tests and notebooks
        self.prompt_ids: list[str] = []  # ids of the records this process sampled rollouts for (an audit trail)
        self.nan_batches = 0
        self.zero_adv_skipped = 0
        self.difficulty_skipped = 0  # batches with no informative group under difficulty_filter (no step)
        self._consecutive_uninformative = 0
        self._consecutive_nan = 0
        self._pending: list[tuple[int, dict[str, float]]] = []  # (step, metrics) rows not yet sent to the logger
        self._buffer: Rollouts | None = None  # the last rollout batch (for tests and notebooks)
        fwd = inspect.signature(self._hf().forward).parameters
        self._cache_kw = "cache" if "cache" in fwd else "past_key_values"  # renamed in transformers 5.x
        # rollout=vllm: the engine starts in on_train_start; the flag says an optimizer step changed the weights
        # since the last push. Rollouts dispatch on vllm_rollouts (a test may set its own engine there).
        self.vllm_rollouts: VLLMRollouts | None = None
        self._engine_stale = False
        if cfg.rollout.rollout == "vllm":
            if self.spec.quantization not in (None, "none"):
                raise ValueError("stage.rollout=vllm pushes full-precision merged weights into vLLM: use "
                                 f"model.quantization=none (got {self.spec.quantization!r})")
            self.vllm_rollouts = VLLMRollouts(sorted(eos), self.pad_id, cfg.rollout.vllm)

    def train(self, mode: bool = True) -> GRPOPolicy:
        """Lightning may switch the module to train mode; the frozen reference always stays in eval mode."""
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()
        return self

    # ------------------------------------------------------------------ FSDP2
    def shard(self, mesh, opts) -> None:
        """The policy as in :class:`VLMModule`; a frozen KL reference is sharded the same way."""
        super().shard(mesh, opts)
        if self.ref_model is not None:
            sharding.shard_vlm(self.ref_model, mesh, opts)

    def unshard_after_fit(self) -> None:
        super().unshard_after_fit()
        if sharding.is_sharded(self.ref_model):
            ref = sharding.gather_full_model(self.ref_model, self._rebuild_model, self.device)
            self.ref_model = ref.eval().requires_grad_(False)

    # ------------------------------------------------------------------ rewards
    def score(self, records: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> dict[str, Tensor]:
        """Reward components of N completions (records repeated G times): rm, match, format, total — (N,) each."""
        comps = score_completions(self.rm_fn, records, texts, self.cfg.reward, group_size=self.G)
        return {k: v.to(self.device) for k, v in comps.items()}

    # ------------------------------------------------------------------ one rollout batch
    def make_rollouts(self, records: Sequence[Mapping[str, Any]]) -> tuple[Rollouts | None, dict[str, Any]]:
        """Generate, score and compute advantages for B records. Returns (rollouts or None if skipped, stats)."""
        cfg, G = self.cfg, self.G
        timing: dict[str, float] = {}  # time/generate covers prompt encoding (collation) + sampling
        t0 = time.perf_counter()
        self.prompt_ids.extend(str(r.get("id", "")) for r in records)
        prompt = self.prompt_batch(records)
        prompt_pos = self._rope_index(prompt)  # (3, B, Tp)
        sampler_logps = None
        if self.vllm_rollouts is not None:
            tokens, sampler_logps = self.vllm_generate(records, timing)  # (N, Tc) each
        else:
            tokens = self.generate(prompt, prompt_pos)  # (N, Tc)
        mask, has_eos = completion_mask(tokens, self.eos_ids)  # (N, Tc)
        self._sync()
        t1 = time.perf_counter()
        texts = self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        recs = [r for r in records for _ in range(G)]
        comps = self.score(recs, texts)
        t2 = time.perf_counter()
        timing.update({"time/generate": t1 - t0, "time/reward": t2 - t1})
        stats: dict[str, Any] = {
            "reward_mean": comps["total"].mean(), "reward_std": comps["total"].std(),
            "reward_rm": comps["rm"].mean(), "reward_match": comps["match"].mean(),
            "reward_format": comps["format"].mean(), "accuracy": comps["match"].mean(),
            "format_rate": comps["format"].mean(), "completion_len": mask.sum(dim=1).float().mean(),
            "truncated_frac": (~has_eos).float().mean(), **timing,
        }
        # GRPO learns from within-group differences only: the spread of each term says which one drives it.
        for k in ("rm", "match", "format", "total"):
            stats[f"group_std/{k}"] = group_std(comps[k], G)
        # Where GRPO can learn: groups whose rollouts disagree on the answer (logged whether or not filtered).
        stats["informative_frac"] = informative_fraction(comps["match"], G)
        if self.rm_fn is not None:
            stats["reward_rm_raw"] = comps["rm_raw"].mean()
            # R_phi's accuracy at ranking this batch's right rollouts above the wrong ones of the same prompt
            acc, n_pairs = pairwise_ranking_accuracy(comps["rm_raw"].cpu(), comps["match"].bool().tolist(),
                                                     [i // G for i in range(len(texts))])
            if n_pairs:
                stats["rm_pair_acc"] = acc
        rewards = comps["total"]  # (N,)
        nan_rows = torch.isnan(rewards)
        bad = bool(nan_rows.any())
        if self.trainer_world_size() > 1:  # every rank must agree to skip, or DDP's all-reduce would hang
            bad = bool(self.trainer.strategy.reduce(torch.tensor(float(bad), device=self.device),
                                                    reduce_op="max") > 0)
        if bad:
            idx = nan_rows.nonzero().flatten().tolist()
            if cfg.reward.on_nan == "raise":
                self.flush_logs()
                where = f"rows {idx[:10]}" if idx else "on another rank"
                raise FloatingPointError(
                    f"NaN reward for {len(idx)} of {rewards.numel()} completions ({where}): the reward model is "
                    "broken or diverged. Set stage.on_nan=skip to skip such batches instead.")
            self.nan_batches += 1
            self._consecutive_nan += 1
            log.warning("NaN reward in %d completions: batch skipped (%d so far)", len(idx), self.nan_batches)
            for k in ("reward_mean", "reward_std", "reward_rm", "group_std/rm", "group_std/total", "reward_rm_raw"):
                stats.pop(k, None)  # NaN by construction; the nan_batches counter tells the story
            return None, stats
        self._consecutive_nan = 0
        stats["zero_var_frac"] = (rewards.view(-1, G).amax(1) == rewards.view(-1, G).amin(1)).float().mean()
        silence = False  # this rank has no informative group but another has: its rows take part with advantage 0
        if cfg.difficulty_filter:
            keep = informative_groups(comps["match"], G)  # (B,)
            here = bool(keep.any())
            if self._all_ranks(not here):
                stats["difficulty_empty"] = True
                return None, stats
            if here and not bool(keep.all()):
                rows = kept_rows(keep, G)  # (B' * G,)
                records = [r for r, k in zip(records, keep.tolist(), strict=True) if k]
                prompt = self.prompt_batch(records)  # re-collated: pixel rows of the dropped images go too
                prompt_pos = self._rope_index(prompt)  # (3, B', Tp')
                tokens, mask, rewards = tokens[rows], mask[rows], rewards[rows]
                sampler_logps = sampler_logps[rows] if sampler_logps is not None else None
            silence = not here
            stats["kept_groups"] = float(keep.sum()) if here else 0.0
        batch_std = None
        if cfg.loss.scale_rewards == "batch" and self.trainer_world_size() > 1:
            batch_std = global_reward_std(rewards)  # TRL: the std of the rewards gathered from all ranks
        adv = group_advantages(rewards, G, scale=cfg.loss.scale_rewards, batch_std=batch_std)  # (N,)
        if silence:
            adv = torch.zeros_like(adv)
        stats["zero_adv_frac"] = zero_advantage_fraction(adv, G)
        ro = Rollouts(prompt=prompt, prompt_pos=prompt_pos, completion_ids=tokens,
                      completion_mask=mask.float(), advantages=adv, sampler_logps=sampler_logps)
        if cfg.loss.beta > 0:
            with torch.no_grad():
                if self.is_peft:
                    with self.model.disable_adapter():  # base weights = the reference, no second copy
                        ro.ref_logps, _ = self.completion_logps(self.model, ro)
                else:
                    ro.ref_logps, _ = self.completion_logps(self.ref_model, ro)
        return ro, stats

    def policy_loss(self, ro: Rollouts) -> tuple[Tensor, dict[str, Tensor]]:
        """GRPO loss of the current policy on stored rollouts (one forward); stores old log-probs if reused."""
        lc, rc = self.cfg.loss, self.cfg.rollout
        logps, entropy = self.completion_logps(self.model, ro, with_entropy=True)  # (N, Tc) each
        m = ro.completion_mask
        stats: dict[str, Tensor] = {}
        if ro.uses == 0:
            # The policy that sampled the rollouts *is* the current one at their first use: its detached
            # log-probs are the old ones for the later iterations, no extra forward needed.
            if lc.num_iterations > 1:
                ro.old_logps = logps.detach()
            if ro.sampler_logps is not None:
                ok = m.bool() & torch.isfinite(ro.sampler_logps)  # (N, Tc)
                if bool(ok.any()):  # none: the engine returned no log-probs, and there is nothing to compare
                    # Mean |policy - sampler| log-prob of the sampled tokens: ~0 (dtype noise) when the engine
                    # holds the policy's weights; it grows if a push was missed.
                    stats["vllm_logp_gap"] = (logps.detach() - ro.sampler_logps).abs()[ok].mean()
                if lc.vllm_importance_sampling_correction:
                    cap = lc.vllm_importance_sampling_cap
                    ro.is_weights = truncated_importance_weights(logps, ro.sampler_logps, m, cap)  # (N, Tc)
                    stats.update(importance_weight_stats(logps, ro.sampler_logps, m, cap))
        old = None if ro.uses == 0 else ro.old_logps
        n_items = None
        if lc.loss_type == "dapo" and self.trainer_world_size() > 1:
            n_items = self.trainer.strategy.reduce(m.sum(), reduce_op="sum") / self.trainer_world_size()
        loss, loss_stats = grpo_loss_with_stats(
            logps, old, ro.ref_logps, ro.advantages, m, epsilon_low=lc.epsilon, epsilon_high=lc.epsilon_high,
            beta=lc.beta, loss_type=lc.loss_type, max_completion_length=rc.max_new_tokens,
            num_items_in_batch=n_items, token_weights=ro.is_weights)
        stats.update(loss_stats)
        stats["entropy"] = (entropy * m).sum() / m.sum().clamp(min=1.0)
        ro.uses += 1
        return loss, stats

    # ------------------------------------------------------------------ Lightning
    def trainer_world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _sync(self) -> None:
        if self.device.type == "cuda":  # honest phase timings on GPU
            torch.cuda.synchronize(self.device)

    def _all_ranks(self, flag: bool) -> bool:
        """``flag`` on every rank (a collective under data parallelism: ranks must skip a step together)."""
        if self.trainer_world_size() > 1:
            return bool(self.trainer.strategy.reduce(torch.tensor(float(flag), device=self.device),
                                                     reduce_op="min") > 0)
        return flag

    def training_step(self, batch: Sequence[Mapping[str, Any]], batch_idx: int) -> None:
        """Rollouts on ``batch``, then ``num_iterations`` optimizer steps on them (TRL reuses one batch mu times)."""
        cfg = self.cfg
        ro, stats = self.make_rollouts(batch)
        if ro is None and stats.pop("difficulty_empty", False):
            # difficulty_filter: every group all right or all wrong on every rank; no step, not counted
            self.difficulty_skipped += 1
            self._consecutive_uninformative += 1
            self._log_step({**stats, "difficulty_skipped": float(self.difficulty_skipped), "skipped": 1.0},
                           len(batch))
            # Skipped batches are no steps: a policy that gets every prompt all right (or all wrong) would never
            # reach max_steps. A whole epoch without an informative group ends training.
            n_batches = getattr(self.trainer, "num_training_batches", math.inf) if self._trainer is not None else math.inf
            if self._consecutive_uninformative >= n_batches:
                log.warning("difficulty_filter: no informative prompt in %d consecutive batches (a whole epoch): "
                            "GRPO stops at step %d, nothing left to learn from the answers", n_batches,
                            self.global_step)
                self.trainer.should_stop = True
            return None
        self._consecutive_uninformative = 0
        if ro is None:  # NaN rewards, on_nan=skip: flag it, no update
            self._log_step({**stats, "nan_batches": float(self.nan_batches), "skipped": 1.0}, len(batch))
            # Skipped batches do not count as optimizer steps, so a reward model that always gives NaN
            # would never reach max_steps: stop it.
            if self._consecutive_nan >= cfg.reward.max_nan_batches:
                self.flush_logs()
                raise FloatingPointError(f"{self._consecutive_nan} consecutive batches with NaN rewards: the "
                                         "reward model is broken (stage.max_nan_batches)")
            return None
        self._buffer = ro
        if cfg.skip_zero_advantage and cfg.loss.beta == 0 and self._all_ranks(bool((ro.advantages == 0).all())):
            # No signal in any group: the loss gradient is exactly 0, but AdamW's momentum would still move every
            # weight by about lr. Skip the step (the optimizer state stays as it is); it is not counted.
            self.zero_adv_skipped += 1
            self._log_step({**stats, "zero_adv_skipped": float(self.zero_adv_skipped), "skipped": 1.0}, len(batch))
            return None
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        for i in range(cfg.loss.num_iterations):
            if i > 0 and 0 <= max_steps <= self.global_step:
                break  # max_steps reached inside a rollout batch's iterations
            self._optimizer_step(ro, stats if i == 0 else {}, len(batch))
        return None

    def _optimizer_step(self, ro: Rollouts, stats: dict[str, Any], batch_size: int) -> None:
        cfg = self.cfg
        opt = self.optimizers()
        sched = self.lr_schedulers()
        t0 = time.perf_counter()
        loss, loss_stats = self.policy_loss(ro)
        self._sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        params = [p for p in self.model.parameters() if p.grad is not None]
        # One norm for the log and the clip (inf: measure only). FSDP2 shards: the norm is a DTensor.
        norm = torch.nn.utils.clip_grad_norm_(params, float(cfg.max_grad_norm or math.inf))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        opt.step()
        if sched is not None:
            sched.step()
        if self.vllm_rollouts is not None:
            self._engine_stale = True  # pushed before the next rollout, not now: num_iterations > 1 reuses rollouts
        self._sync()
        t2 = time.perf_counter()
        row = {**stats, **loss_stats}
        row.update({"loss": loss.detach(), "grad_norm": norm.detach(), "time/logp_forward": t1 - t0,
                    "time/backward": t2 - t1, "nan_batches": float(self.nan_batches), "skipped": 0.0,
                    "rollout_reuse": float(ro.uses - 1)})
        self._log_step(row, batch_size)

    def _log_step(self, stats: Mapping[str, Any], batch_size: int) -> None:
        """Record one step's diagnostics: one host transfer for all tensor stats, the hacking monitor, the logger.

        Every step is recorded (``self.history`` and the logger), but rows reach the logger in batches of
        ``log_flush_every`` steps: per step, Lightning's ``self.log`` bookkeeping (~2 ms a key) and one MLflow
        SQLite write (~50 ms) cost as much as the GRPO step of the tiny model. Only the progress-bar values go
        through ``self.log``.
        """
        keys = [k for k, v in stats.items() if isinstance(v, Tensor)]
        values: list[float] = []
        if keys:
            vec = torch.stack([stats[k].detach().float().reshape(()) for k in keys])  # (K,)
            if self.trainer_world_size() > 1:  # one collective for all stats: every rank logs the global means
                vec = self.trainer.strategy.reduce(vec, reduce_op="mean")
            values = vec.tolist()
        row = {k: float(v) for k, v in stats.items() if not isinstance(v, Tensor)}
        row.update(dict(zip(keys, values, strict=True)))
        if "format_rate" in row and "accuracy" in row:
            row["reward_hacking"] = float(self.monitor.update(row["format_rate"], row["accuracy"]))
        step = int(self.global_step)
        self.history.append({**row, "step": float(step)})
        self._pending.append((step, {f"train/{k}": v for k, v in row.items() if math.isfinite(v)}))
        if len(self._pending) >= self.cfg.log_flush_every:
            self.flush_logs()
        for k in ("reward_mean", "accuracy", "loss"):
            if k in row and math.isfinite(row[k]):
                self.log(f"train/{k}", row[k], batch_size=batch_size, prog_bar=True, logger=False)

    def flush_logs(self) -> None:
        """Write the buffered per-step rows to the trainer's loggers (MLflow: one ``log_batch`` for all)."""
        pending, self._pending = self._pending, []
        if not pending or self._trainer is None or not self.trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import MLFlowLogger

        for logger in self.loggers:
            if isinstance(logger, MLFlowLogger):
                from mlflow.entities import Metric

                ts = int(time.time() * 1000)
                metrics = [Metric(k, v, ts, step) for step, row in pending for k, v in row.items()]
                for i in range(0, len(metrics), 1000):  # MLflow's per-request limit
                    logger.experiment.log_batch(logger.run_id, metrics=metrics[i : i + 1000])
            else:
                for step, row in pending:
                    logger.log_metrics(row, step=step)

    def on_train_start(self) -> None:
        """rollout=vllm: start the engine from the policy as it is now (after sharding, device moves, a resume)."""
        if self.vllm_rollouts is not None and self.vllm_rollouts.llm is None:
            self.vllm_rollouts.start(self.model, self.processor)
            self._engine_stale = False

    def on_train_end(self) -> None:
        self.flush_logs()
        if self.vllm_rollouts is not None:
            self.vllm_rollouts.close()  # its GPU memory goes back before evaluation (and the loop's next stage)
