"""Stage wiring: ``train.py`` hands the composed config to :func:`run`, which dispatches on ``stage.name``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
from omegaconf import DictConfig

from medgr2.configs import check_config
from medgr2.pipeline.common import to_dict
from medgr2.pipeline.tracking import Tracker, make_tracker

log = logging.getLogger(__name__)


def _stages() -> dict[str, Callable[[DictConfig, Tracker], dict[str, float]]]:
    from medgr2.pipeline.evaluate import run_evaluate
    from medgr2.pipeline.generate import run_distill, run_generate
    from medgr2.pipeline.grade import run_grade
    from medgr2.pipeline.grpo import run_grpo
    from medgr2.pipeline.inspect_data import run_inspect
    from medgr2.pipeline.loop import run_loop
    from medgr2.pipeline.pretrain import run_pretrain_stage
    from medgr2.pipeline.reward import run_reward
    from medgr2.pipeline.score import run_score
    from medgr2.pipeline.select import run_select
    from medgr2.pipeline.sft import run_sft

    return {"pretrain": run_pretrain_stage, "sft": run_sft, "evaluate": run_evaluate, "inspect": run_inspect,
            "grade": run_grade, "reward": run_reward, "score": run_score, "grpo": run_grpo,
            "generate": run_generate, "select": run_select, "distill": run_distill, "loop": run_loop}


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the stage ``cfg.stage.name``; returns its final metrics (also logged to MLflow)."""
    stages = _stages()
    name = cfg.stage.name
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; choose one of: {', '.join(sorted(stages))}")
    # Before any work: a misspelt key or a bad value (a protocol, a size) would otherwise fail only at the step
    # that reads it, e.g. the evaluation after SFT or the loop's second iteration.
    check_config(to_dict(cfg.stage), to_dict(cfg.get("evaluate")))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("cpu_threads"):
        # On a shared CPU box, torch's default (one thread per core in every process) oversubscribes the
        # cores: measured 5-20x slower steps with several jobs running; 1 thread per job avoids it.
        import torch

        torch.set_num_threads(int(cfg.cpu_threads))
    from medgr2.pipeline.stage import tracked_run

    with tracked_run(make_tracker(cfg, name)) as tracker:
        return stages[name](cfg, tracker)
