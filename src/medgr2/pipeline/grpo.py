"""``stage=grpo``: GRPO from an SFT policy (or the pretrained base) with the MedGR2 reward, then evaluation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from medgr2.configs.grpo import GRPOConfig
from medgr2.modules.grpo import GRPOPolicy
from medgr2.modules.grpo_resume import GRPOResumeState, ResumableSampler
from medgr2.pipeline.common import instruction, output_dir, stage_rows, to_dict
from medgr2.pipeline.pretrain import base_weights
from medgr2.pipeline.stage import fit_and_export
from medgr2.pipeline.tracking import Tracker
from medgr2.training.item_dataset import ItemDataset

log = logging.getLogger(__name__)


def prompt_rows(cfg: DictConfig) -> datasets.Dataset:
    """GRPO prompts: ``stage.train_data`` (a saved dataset) or the benchmark's train split, ``stage.train_size``."""
    return stage_rows(cfg, "prompts")


def _record(row: Mapping[str, Any]) -> dict[str, Any]:
    return dict(row)


def grpo_loader(dataset, batch_size: int) -> tuple[DataLoader, GRPOResumeState]:
    """The prompt loader (records as they are, ``collate_fn=list``) and the callback that makes it resumable: a
    resumed run continues with the next prompt of the interrupted epoch and the same RNG states."""
    sampler = ResumableSampler(dataset)
    drop_last = len(dataset) >= batch_size
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=list, num_workers=0,
                        drop_last=drop_last)
    return loader, GRPOResumeState(sampler, batch_size, drop_last)


def grpo_config(cfg: DictConfig) -> GRPOConfig:
    """The typed :class:`GRPOConfig` from the flat ``cfg.stage`` (the GRPO stage's own keys; the loop's
    ``stage.grpo`` node after :func:`medgr2.pipeline.loop` made it the stage). Non-GRPO keys (``batch_size``,
    ``init``, ...) are ignored; ``max_steps`` is the schedule length and the instruction is the run's."""
    values = {k: v for k, v in to_dict(cfg.stage).items() if k in GRPOConfig.flat_keys()}
    values.update(total_steps=int(cfg.stage.max_steps), instruction=instruction(cfg))
    return GRPOConfig.from_flat(values)


def build_policy(cfg: DictConfig, weights: str | None) -> GRPOPolicy:
    """The GRPO module from ``cfg.stage`` (every GRPO knob is a documented key of conf/stage/grpo.yaml)."""
    return GRPOPolicy(model=to_dict(cfg.model), weights=weights, config=grpo_config(cfg))


def write_rank_audit(out: Path, trainer, module: GRPOPolicy) -> Path:
    """``grpo_ranks/rank<r>.json``: the prompts this process trained on and a checksum of its parameters.

    Under data parallelism every rank must see its own prompts (DistributedSampler) and end with the same
    weights (DDP averages gradients): the files make both checkable after the fact.
    """
    import json

    import torch

    with torch.no_grad():
        checksum = float(sum(p.detach().double().sum() for p in module.model.parameters()))
    path = out / "grpo_ranks" / f"rank{trainer.global_rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": trainer.global_rank, "world_size": trainer.world_size,
                                "prompt_ids": module.prompt_ids, "param_checksum": checksum,
                                "steps": trainer.global_step, "nan_batches": module.nan_batches}))
    return path


def run_grpo(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """Train GRPO on SynthMed (or ``stage.train_data``) prompts, export the policy, evaluate on the test split."""
    return train_grpo(cfg, tracker)[0]


def train_grpo(cfg: DictConfig, tracker: Tracker) -> tuple[dict[str, float], Path]:
    """GRPO with ``cfg.stage``; returns the metrics and the exported policy folder."""
    s = cfg.stage
    weights = s.get("init") or base_weights(cfg, tracker)
    rows = prompt_rows(cfg)
    module = build_policy(cfg, weights)
    # Records go to the module as they are (collate_fn=list): it builds prompts itself, and only when it
    # samples new rollouts (with num_iterations > 1 most steps reuse stored ones).
    loader, resume_state = grpo_loader(ItemDataset(rows, _record), int(s.batch_size))
    with open_dict(cfg):
        # GRPO uses manual optimization, for which Lightning refuses automatic clipping: the module clips.
        cfg.trainer.gradient_clip_val = None
    log.info("GRPO on %d prompts x %d rollouts for %d steps from %s (reward model: %s)", len(rows),
             s.num_generations, s.max_steps, weights or cfg.model.get("path") or "the initial weights",
             s.get("reward_model") or "none")
    out = output_dir(cfg)
    policy_dir = out / "policy"
    metrics = fit_and_export(cfg, tracker, module, loader, max_steps=int(s.max_steps), out=out, export_to=policy_dir,
                             export_tag="policy_dir", ckpt_path=s.get("ckpt_path"), extra_callbacks=[resume_state],
                             after_fit=lambda trainer: write_rank_audit(out, trainer, module),
                             evaluate=bool(s.get("evaluate", True)))
    return {"train_prompts": float(len(rows)), "nan_batches": float(module.nan_batches), **metrics}, policy_dir
