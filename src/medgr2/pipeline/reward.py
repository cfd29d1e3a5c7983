"""``stage=reward`` (paper §3, "Reward Model R_φ", Eq. 1): train :class:`~medgr2.modules.reward.RewardRegressor`
on D_grade (built when missing, :mod:`medgr2.pipeline.grade`) with a held-out split *by source record* (all
grades of a question are on the same side), from the pretrained base or from ``stage.init`` — a previous R_φ
export or Lightning checkpoint, for continual adaptation on new graded pairs (``stage.train_data``); lineage
goes to MLflow tags. The model is exported to the run's folder and to :func:`output_path` (keyed by config,
:func:`reward_key`) where later stages find it (:func:`find_reward_model`, :func:`ensure_reward_model`).

Which R_φ a non-reward stage means: ``cfg.stage.rm`` — the reward stage's settings, included by
``conf/stage/score.yaml`` with ``defaults: [reward@rm]`` (a GRPO stage can do the same) — or, for the loop,
its R_φ^0 settings ``cfg.stage.reward``. A stage with neither gets a clear error: the settings come through
the composed config, never from a second read of ``conf/`` (which a wheel install does not have).

The repository ships R_φ^0 of the default config (``medgr2/assets/reward/rm-<key>``, next to the shipped base
of :mod:`medgr2.pipeline.pretrain`): training it took most of a first ``make demo`` once the base was
shipped, so a config whose key matches — and whose base is the shipped base it was trained from — uses the
shipped folder and trains nothing; any other config trains into the cache as before.
``tests/test_shipped_reward.py`` fails when the default config's key moves away from the shipped folder, and
``make reward0`` (``python train.py stage=reward +stage.ship=true``) trains it anew and ships it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from medgr2.data.grade_config import GRADES
from medgr2.data.grade_transforms import held_out_probes, split_by_source
from medgr2.data.grading import GRADED_FEATURES
from medgr2.pipeline.common import (
    cache_dir,
    fingerprint,
    instruction,
    isolated_seed,
    output_dir,
    product_seed,
    seed_part,
    to_dict,
)
from medgr2.pipeline.grade import build_grade_dataset
from medgr2.pipeline.stage import Artifact
from medgr2.pipeline.tracking import Tracker

log = logging.getLogger(__name__)

#: The R_φ^0 the package ships (package data): ``rm-<reward_key>`` folders.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets" / "reward"
#: Keys of the reward settings that do not change the trained weights (progress, resume, shipping).
NON_KEY_SETTINGS = ("name", "val_every", "eval_batch_size", "ckpt_path", "ship")
#: Settings added after R_φ exports existed (the shipped R_φ^0 among them): left out of the key at 0, so
#: those exports keep their keys.
ZERO_OFF_KEY_SETTINGS = ("image_negative_rate",)


def rm_settings(cfg: DictConfig) -> DictConfig:
    """The reward-model settings this config means: ``cfg.stage`` for ``stage=reward``, the loop's R_φ^0
    settings ``cfg.stage.reward`` for ``stage=loop``, else ``cfg.stage.rm``."""
    if cfg.stage.name == "reward":
        return cfg.stage
    if cfg.stage.name == "loop" and cfg.stage.get("reward") is not None:
        return cfg.stage.reward
    if cfg.stage.get("rm") is not None:
        return cfg.stage.rm
    raise ValueError(f"stage={cfg.stage.name} has no reward-model settings: give it an `rm` node "
                     "(defaults: [reward@rm], as conf/stage/score.yaml does) or set the R_φ export path explicitly")


def reward_key(cfg: DictConfig, r: DictConfig | None = None) -> str:
    """Cache key of an R_φ: the model, the data and the reward settings (not the output/progress knobs)."""
    r = r if r is not None else rm_settings(cfg)
    model = {k: v for k, v in to_dict(cfg.model).items() if k != "cache_dir"}
    # Knobs that do not change the trained weights stay out of the key ("ship" is never in a YAML: a
    # config with it set has the key of the same config without it).
    settings = {k: v for k, v in to_dict(r).items()
                if k not in NON_KEY_SETTINGS and not (k in ZERO_OFF_KEY_SETTINGS and not v)}
    # R_φ^0 trains from the pretrained base, so the base's seed is part of its identity (empty at the default 0:
    # the keys of existing exports, the shipped one among them, do not change).
    return fingerprint("rm-v1", model, cfg.data, settings, cfg.data.get("instruction"), *seed_part(cfg, "reward"),
                       *seed_part(cfg, "base"))


def output_path(cfg: DictConfig, r: DictConfig | None = None, folder: Path | None = None) -> Path:
    """Where ``stage=reward`` with these settings caches its R_φ export (``<cache>/reward/rm-<key>``; it may
    not exist yet), or would in ``folder`` (the shipped R_φ^0's folder). Later stages look an R_φ up with
    :func:`find_reward_model`, which also knows the shipped one."""
    return (folder if folder is not None else cache_dir(cfg) / "reward") / f"rm-{reward_key(cfg, r)}"


def _is_export(folder: Path) -> bool:
    # An R_φ folder written before the artifact meta: an export is complete once its head config is there
    # (it was copied into the cache atomically).
    from medgr2.modules.reward import HEAD_CONFIG

    return (folder / HEAD_CONFIG).exists()


def reward_artifact(cfg: DictConfig, r: DictConfig | None = None, folder: Path | None = None) -> Artifact:
    """The R_φ of these settings as a cached product: :func:`output_path` under :func:`reward_key`; exports
    from before the artifact meta are recognised by their head config."""
    return Artifact(output_path(cfg, r, folder), reward_key(cfg, r), ready=_is_export)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shipped_base_id(cfg: DictConfig) -> dict[str, str] | None:
    """The shipped pretrained base this config starts from (folder name, weights' SHA-256), else None."""
    from medgr2.pipeline.pretrain import shipped_base

    p = cfg.model.get("pretrain")
    base = shipped_base(cfg) if p and p.get("enabled", True) and cfg.data.name == "synthmed" else None  # as base_weights
    return {"base": base.name, "base_sha256": _sha256(base / "model.safetensors")} if base is not None else None


def shipped_reward_model(cfg: DictConfig, r: DictConfig | None = None, shipped_dir: Path | None = None) -> Path | None:
    """The R_φ^0 the package ships (in ``shipped_dir``, default :data:`SHIPPED_DIR`) for this config's
    :func:`reward_key`, or None when it ships none for it.

    The key covers the model and reward configs but not the base's weights, so the shipped folder is used
    only when it was trained from the base this config starts from: the shipped base, byte for byte."""
    from medgr2.modules.reward import HEAD_CONFIG

    shipped = reward_artifact(cfg, r, shipped_dir or SHIPPED_DIR)
    path = shipped.path
    if shipped.meta() is None:
        return None
    lineage = json.loads((path / HEAD_CONFIG).read_text()).get("lineage") or {}
    base = _shipped_base_id(cfg)
    if base is None or {k: lineage.get(k) for k in base} != base:
        log.info("the shipped R_φ^0 %s was trained from another base than this config's: not used", path)
        return None
    return path


def find_reward_model(cfg: DictConfig, r: DictConfig | None = None) -> Path | None:
    """The R_φ for these settings that exists already: the shipped one when its key matches, else the cached
    one (:func:`output_path`); None when neither exists."""
    shipped = shipped_reward_model(cfg, r)
    if shipped is not None:
        return shipped
    cached = reward_artifact(cfg, r)
    return cached.path if cached.meta() is not None else None


def _training_item(row: Mapping[str, Any], instruction: str, resolve_letter: bool) -> dict[str, Any]:
    from medgr2.data.reward_items import reward_item

    item = reward_item(row, instruction, resolve_letter=resolve_letter)
    item.update(score_target=float(row["target"]), grade=row["grade"], source_id=row["source_id"])
    return item


def _parent_lineage(init: str) -> dict[str, Any]:
    from medgr2.modules.reward import HEAD_CONFIG

    meta_file = Path(init) / HEAD_CONFIG
    parent = json.loads(meta_file.read_text()).get("lineage", {}) if meta_file.exists() else {}
    return {"parent": str(Path(init).resolve()), "parent_run_id": parent.get("run_id"),
            "generation": int(parent.get("generation", 0)) + 1}


def _init_module(cfg: DictConfig, r: DictConfig, tracker: Tracker, train_targets: Sequence[float]):
    """A fresh RewardRegressor from the base (or ``r.init``), with the normalisation it should use."""
    from medgr2.modules.reward import HEAD_CONFIG, RewardRegressor
    from medgr2.pipeline.pretrain import base_weights

    init = r.get("init")
    if init and Path(init).is_dir():
        meta = json.loads((Path(init) / HEAD_CONFIG).read_text())
        # The parent's head and its output scale belong together: keep its normalisation.
        mean, std, head_hidden, weights = meta["target_mean"], meta["target_std"], meta["head_hidden"], str(init)
        pooling = str(meta.get("pooling", "last"))
        resolve = bool(meta.get("resolve_letter", False))
    else:
        if init and not Path(init).exists():
            raise FileNotFoundError(f"stage.init={init} does not exist (an R_φ export folder or a .ckpt file)")
        weights = base_weights(cfg, tracker)
        head_hidden = int(r.head_hidden)
        pooling = str(r.get("pooling", "last"))
        resolve = bool(r.get("resolve_letter", True))
        if r.get("normalize", True) and len(train_targets) > 1:
            n = len(train_targets)
            mean = sum(train_targets) / n
            std = math.sqrt(sum((t - mean) ** 2 for t in train_targets) / n) or 1.0
        else:
            mean, std = 0.0, 1.0
    module = RewardRegressor(model=to_dict(cfg.model), weights=weights, lr=float(r.lr),
                             weight_decay=float(r.weight_decay), warmup_steps=int(r.warmup_steps),
                             total_steps=int(r.max_steps), lora=r.get("lora"), head_hidden=int(head_hidden),
                             target_mean=float(mean), target_std=float(std),
                             head_lr=float(r.head_lr) if r.get("head_lr") else None,
                             hi=float(r.grading.synonym), lo=float(r.grading.deletion), instruction=instruction(cfg),
                             pooling=pooling, resolve_letter=resolve)
    if init and Path(init).is_dir():
        module.load_head(init)
    elif init:  # a Lightning checkpoint of a previous reward run (same model and head settings)
        import torch

        # weights_only: our checkpoints hold tensors and plain containers; never unpickle arbitrary objects.
        state = torch.load(str(init), map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    return module


def train_reward(cfg: DictConfig, r: DictConfig, tracker: Tracker, out: Path) -> tuple[dict[str, float], Path]:
    """Train R_φ with settings ``r``; export to ``out/reward_model`` and (re)publish it in the cache
    (:func:`reward_artifact`; under DDP every rank trains, rank 0 publishes). Returns metrics, cache path."""
    cached = reward_artifact(cfg, r)
    metrics: dict[str, float] = {}

    def build(tmp: Path) -> None:
        m, export = _fit_reward(cfg, r, tracker, out, cached.path)
        metrics.update(m)
        if export is not None:  # rank 0's
            shutil.copytree(export, tmp, dirs_exist_ok=True)

    cached.get_or_build(build, rebuild=True, collective=True)
    return metrics, cached.path


def _fit_reward(cfg: DictConfig, r: DictConfig, tracker: Tracker, out: Path,
                cache_path: Path) -> tuple[dict[str, float], Path | None]:
    """Train R_φ, export it to ``out/reward_model`` on rank 0; returns (metrics, the export on rank 0 else None)."""
    from torch.utils.data import DataLoader

    from medgr2.modules.reward import reward_metrics
    from medgr2.modules.reward_scorer import RewardScorer
    from medgr2.pipeline.common import build_trainer
    from medgr2.training.item_dataset import ItemDataset
    from medgr2.training.reward_collate import RewardCollator

    if r.get("train_data"):
        rows = datasets.load_from_disk(str(r.train_data))
        missing = set(GRADED_FEATURES) - set(rows.column_names)
        if missing:
            raise ValueError(f"stage.train_data={r.train_data} is not a graded dataset: no {sorted(missing)}")
        data_path = Path(r.train_data)
    else:
        rows, data_path = build_grade_dataset(cfg, r, tracker)
    train_idx, val_idx = split_by_source(rows["source_id"], float(r.val_fraction), product_seed(cfg, "reward"),
                                         r.get("max_val_sources"))
    train_rows = rows.select(train_idx)
    # Regression metrics are on the paper's four grades; the probes (built afresh for the held-out records,
    # never trained on: a wrong letter, another record's image) measure the pairwise accuracies.
    val_rows = [v for v in rows.select(val_idx).to_list() if v["grade"] in GRADES]
    probes = held_out_probes(val_rows, int(r.grading.seed))
    val_all = val_rows + probes
    log.info("R_φ data %s: %d train rows, %d held-out rows (%d sources) + %d probes (wrong letter, image swap)",
             data_path, len(train_rows), len(val_rows), len({v["source_id"] for v in val_rows}), len(probes))

    module = _init_module(cfg, r, tracker, train_rows["target"])
    lineage = _parent_lineage(str(r.init)) if r.get("init") else {"parent": None, "generation": 0}
    lineage.update(run_id=tracker.run_id, train_data=str(data_path))
    tracker.set_tags({f"rm.{k}": str(v) for k, v in lineage.items() if v is not None})
    instr, resolve = module.instruction, module.resolve_letter
    collate = RewardCollator(module.processor)

    def to_item(row: Mapping[str, Any]) -> dict[str, Any]:
        return _training_item(row, instr, resolve)

    bs = int(r.batch_size)
    train_dl = DataLoader(ItemDataset(train_rows, to_item), batch_size=bs, shuffle=True, collate_fn=collate,
                          num_workers=0, drop_last=len(train_rows) > bs)
    val_dl = DataLoader(ItemDataset(val_all, to_item), batch_size=int(r.eval_batch_size), collate_fn=collate)
    trainer = build_trainer(cfg, tracker, max_steps=int(r.max_steps), ckpt_dir=out / "checkpoints",
                            val_every=min(int(r.val_every), int(r.max_steps)) if val_all else None)
    trainer.fit(module, train_dl, val_dl if val_all else None, ckpt_path=r.get("ckpt_path"))

    metrics: dict[str, float] = {"rm/train_rows": float(len(train_rows)), "rm/val_rows": float(len(val_rows))}
    export = None
    if trainer.is_global_zero:
        if val_all:
            # The held-out numbers of the final model, scored the way later stages score (eval, no grad).
            scores = RewardScorer(module, batch_size=int(r.eval_batch_size)).score(val_all)
            final = reward_metrics(scores, [float(v["target"]) for v in val_all], [v["grade"] for v in val_all],
                                   [v["source_id"] for v in val_all], hi=module.hparams.hi, lo=module.hparams.lo)
            metrics.update({f"rm/{k}": v for k, v in final.items()})
        export = module.export(out / "reward_model", lineage)
        tracker.set_tags({"rm.export": str(export), "rm.cache": str(cache_path)})
        tracker.log_metrics(metrics)
        log.info("R_φ held-out: %s", {k: round(v, 4) for k, v in metrics.items()})
    trainer.strategy.barrier()
    return metrics, export


def run_reward(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """``stage=reward``: train R_φ, print its held-out metrics and where it is; ``+stage.ship=true`` also makes
    it the shipped R_φ^0 (:func:`ship_export`)."""
    ship = bool(cfg.stage.get("ship"))
    if ship:
        _ship_checks(cfg, cfg.stage)  # before training: a config that cannot be shipped fails in seconds
    with isolated_seed(product_seed(cfg, "reward")):  # it fills the same cache entry as the loop's R_φ^0
        metrics, path = train_reward(cfg, cfg.stage, tracker, output_dir(cfg))
    if ship and rank_zero_only.rank == 0:
        path = ship_export(cfg, output_dir(cfg) / "reward_model")
    keys = ("rm/spearman", "rm/kendall", "rm/mse", "rm/mae", "rm/sep_acc", "rm/pairwise_acc", "rm/image_pair_acc")
    print("R_φ held-out: " + ", ".join(f"{k.split('/')[1]} {metrics[k]:.3f}" for k in keys if k in metrics))
    print(f"R_φ export: {path}")
    return metrics


def ensure_reward_model(cfg: DictConfig, tracker: Tracker | None = None) -> Path:
    """The R_φ for this config's reward settings (:func:`find_reward_model`), trained into the cache first
    when missing."""
    r = rm_settings(cfg)
    found = find_reward_model(cfg, r)
    if found is not None:
        log.info("reusing the %s R_φ %s", "shipped" if found.parent == SHIPPED_DIR else "cached", found)
        return found
    log.info("no cached R_φ at %s: training it", output_path(cfg, r))
    with isolated_seed(product_seed(cfg, "reward")):  # seeds.reward, not the run's seed: sweeps share R_φ^0
        _, path = train_reward(cfg, r, tracker or Tracker(), output_dir(cfg) / "reward_train")
    return path


def _ship_checks(cfg: DictConfig, r: DictConfig) -> dict[str, str]:
    """What a shipped R_φ^0 needs: no parent, no other training data, the shipped base; returns the base's id."""
    if r.get("init") or r.get("train_data"):
        raise ValueError("stage.ship=true ships R_φ^0: it needs stage.init=null and stage.train_data=null")
    base = _shipped_base_id(cfg)
    if base is None:
        raise ValueError("stage.ship=true ships R_φ^0 trained from the shipped pretrained base, and this config "
                         "has none (`make base` ships the default config's)")
    return base


def ship_export(cfg: DictConfig, export: Path, shipped_dir: Path | None = None) -> Path:
    """Make the R_φ export ``export`` (trained with ``cfg``'s reward settings from the shipped base) the only
    ``rm-<key>`` folder in ``shipped_dir``.

    Its lineage is rewritten for a package: no run id and no machine path; it names the D_grade folder and
    the shipped base (folder and weights' SHA-256) it was trained from, which :func:`shipped_reward_model`
    checks."""
    from medgr2.modules.reward import HEAD_CONFIG
    from medgr2.pipeline.grade import output_path as dgrade_path

    r = rm_settings(cfg)
    base = _ship_checks(cfg, r)
    shipped_dir = shipped_dir or SHIPPED_DIR
    shipped = reward_artifact(cfg, r, shipped_dir)
    target = shipped.path
    meta = json.loads((Path(export) / HEAD_CONFIG).read_text())
    meta["lineage"] = {"generation": 0, "parent": None, "train_data": dgrade_path(cfg, r).name, **base}

    def build(tmp: Path) -> None:
        shutil.copytree(export, tmp, dirs_exist_ok=True)
        (tmp / HEAD_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))

    shipped.get_or_build(build, rebuild=True)
    for old in shipped_dir.glob("rm-*"):
        if old != target:
            shutil.rmtree(old)
            log.info("removed the previously shipped R_φ^0 %s", old)
    return target


__all__ = ["NON_KEY_SETTINGS", "SHIPPED_DIR", "ensure_reward_model", "find_reward_model", "output_path",
           "reward_artifact", "reward_key", "rm_settings", "run_reward", "ship_export", "shipped_reward_model", "train_reward"]
