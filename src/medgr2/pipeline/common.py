"""What every stage needs: data by config, a Lightning Trainer by config, cache keys, paths."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from medgr2.utils.hashing import SPACED, stable_hash

log = logging.getLogger(__name__)


def to_dict(node: Any) -> Any:
    """OmegaConf node -> plain resolved python containers (other values pass through)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def with_stage(cfg: DictConfig, stage: Any, output_dir: str | Path | None = None) -> DictConfig:
    """A copy of ``cfg`` whose ``stage`` node is ``stage`` (a node or a mapping), optionally writing into
    ``output_dir``: how one stage runs or locates another stage's work (the loop's steps, score's
    candidates, select's default pool)."""
    import copy

    from omegaconf import open_dict

    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        # The old node is typed by its stage's schema (medgr2.configs), which accepts no other stage's node.
        del sub["stage"]
        sub.stage = stage if OmegaConf.is_config(stage) else OmegaConf.create(dict(stage))
        if output_dir is not None:
            sub.paths.output_dir = str(output_dir)
    return sub


def sub_config(cfg: DictConfig, stage: str | Mapping[str, Any], out: Path, **overrides: Any) -> DictConfig:
    """A copy of ``cfg`` whose ``stage`` is ``cfg.stage.<stage>`` (resolved) or the given mapping, with
    ``overrides``, writing into ``out``: how each step of the loop runs the single stage's code."""
    node = dict(to_dict(cfg.stage[stage])) if isinstance(stage, str) else dict(stage)
    node.update(overrides)
    return with_stage(cfg, node, out)


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-able parts or config nodes (cache keys for the pretrained base, candidate
    pools…): :func:`~medgr2.utils.hashing.stable_hash` with the separators these keys were always made with."""
    return stable_hash(*[to_dict(p) for p in parts], length=12, separators=SPACED)


def instruction(cfg: DictConfig) -> str:
    """The prompt instruction of this config (``data.instruction``), resolved once for every stage."""
    from medgr2.data.prompting import instruction_text

    return instruction_text(cfg.data.get("instruction", "short"))


def product_seed(cfg: DictConfig, name: str) -> int:
    """The seed of a shared cached product (``seeds.base``, ``seeds.pool``, ``seeds.reward``; 0 when unset),
    independent of the run's ``seed`` so a seed sweep reuses the product (docs/statistics.md)."""
    seeds = cfg.get("seeds") or {}
    return int(seeds.get(name, 0) or 0)


def seed_part(cfg: DictConfig, name: str) -> list[dict[str, int]]:
    """Cache-key part for a product seed: empty at the default 0, so keys made before seeds existed (built
    with ``seed=0``) still match."""
    value = product_seed(cfg, name)
    return [{f"seeds.{name}": value}] if value else []


@contextmanager
def isolated_seed(seed: int) -> Iterator[None]:
    """Build a shared product under its own ``seed``, then hand the run its RNG state back: the product does
    not depend on the run's seed, and the run's draws do not depend on whether the product was cached."""
    import random

    import numpy as np
    import torch

    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")})
    L.seed_everything(int(seed), workers=True, verbose=False)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state_all(saved[3])
        for k, v in saved[4].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.cache_dir).resolve()


def output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def synthmed_config(dcfg: DictConfig):
    from medgr2.data.synthmed import SynthMedConfig

    keys = SynthMedConfig.__dataclass_fields__
    d = {k: v for k, v in to_dict(dcfg).items() if k in keys}
    if "radius" in d:
        d["radius"] = tuple(d["radius"])
    return SynthMedConfig(**d)


def load_split(cfg: DictConfig, split: str, limit: int | None = None) -> datasets.Dataset:
    """The canonical-schema dataset for ``split`` of the configured data set (``data.name``)."""
    dcfg = cfg.data
    if dcfg.name == "synthmed":
        from medgr2.data.synthmed import load_synthmed

        scfg = synthmed_config(dcfg)
        n = scfg.size_of(split) if limit is None else min(limit, scfg.size_of(split))
        return load_synthmed(scfg, split, cache_dir(cfg) / "data", n=n)
    if dcfg.name == "omnimedvqa":
        res = load_omnimedvqa_from_config(cfg, split)
        from medgr2.data.schema import to_dataset

        ds = to_dataset(res.records)
        return ds.select(range(min(limit, len(ds)))) if limit is not None else ds
    raise ValueError(f"unknown data.name {dcfg.name!r} (synthmed, omnimedvqa)")


def stage_rows(cfg: DictConfig, what: str = "training rows") -> datasets.Dataset:
    """A stage's input rows: ``stage.train_data`` (a saved dataset, e.g. a selection) or the benchmark's
    train split, cut to ``stage.train_size``."""
    s = cfg.stage
    if s.get("train_data"):
        rows = datasets.load_from_disk(str(s.train_data))
    else:
        rows = load_split(cfg, "train", limit=s.get("train_size"))
    if s.get("train_size") and len(rows) > int(s.train_size):
        rows = rows.select(range(int(s.train_size)))
    if len(rows) == 0:
        raise ValueError(f"stage={s.name} has no {what}: check stage.train_data / stage.train_size")
    return rows


def load_omnimedvqa_from_config(cfg: DictConfig, split: str | None):
    from medgr2.data.omnimedvqa import load_omnimedvqa

    dcfg = cfg.data
    if not dcfg.get("root"):
        raise ValueError("data=omnimedvqa needs data.root=PATH (the folder holding QA_information/ or Splits/)")
    res = load_omnimedvqa(dcfg.root, layout=dcfg.get("layout", "auto"), split=split, axis=dcfg.get("axis", "modality"),
                          image_root=dcfg.get("image_root"), limit=dcfg.get("limit"), qa_root=dcfg.get("qa_root"),
                          image_disjoint=bool(dcfg.get("image_disjoint", False)))
    if res.n_skipped:
        log.warning("OmniMedVQA %s: skipped %d records: %s", split, res.n_skipped, dict(res.skipped))
    return res


def build_trainer(cfg: DictConfig, tracker, *, max_steps: int, ckpt_dir: Path | None, val_every: int | None = None,
                  extra_callbacks: list | None = None, label: str | None = None) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` with our callbacks, the tracker's logger and, when
    ``trainer.enable_progress_bar``, one :class:`~medgr2.utils.console.StepProgress` bar labelled ``label``
    (default: the stage's name)."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    from medgr2.utils.console import StepProgress

    logger = tracker.lightning_logger()
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not logger:  # logger=none: callbacks that only feed a logger would refuse to start
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if ckpt_dir is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        # Explicit dirpath: with a sqlite: MLflow URI Lightning has no save_dir to put checkpoints in.
        callbacks.append(ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step}", save_last=True,
                                         every_n_train_steps=max(1, int(cfg.checkpoint.every_n_train_steps) or 1),
                                         save_top_k=1, monitor=None, auto_insert_metric_name=False))
    callbacks.extend(extra_callbacks or [])
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgress(label or str(cfg.stage.name)))
    tcfg = dict(to_dict(cfg.trainer))  # lightning.Trainer's keywords only (conf/trainer/*.yaml)
    strategy = tcfg.pop("strategy", "auto")
    if isinstance(strategy, dict):
        strategy = hydra.utils.instantiate(strategy)
    kwargs: dict[str, Any] = dict(tcfg)
    kwargs.update(max_steps=max_steps, logger=logger, callbacks=callbacks,
                  enable_checkpointing=ckpt_dir is not None, strategy=strategy,
                  default_root_dir=str(output_dir(cfg)))
    if val_every:
        kwargs.update(val_check_interval=val_every, check_val_every_n_epoch=None)
    else:
        kwargs.update(limit_val_batches=0)
    return L.Trainer(**kwargs)
