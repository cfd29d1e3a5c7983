"""``stage=select``: pick the training data D_gen from a scored candidate pool (Algorithm 1 lines 5–9).

``python train.py stage=select select=topk k=2000`` — the method comes from the ``select`` group
(``threshold | topk | randk | all``); the top-level ``k``, ``tau`` and ``allow_overlap`` are shortcuts that
override the group's values when set. Selection streams over the pool (:mod:`medgr2.data.selection`); the
selected rows (all columns) are written atomically as a ``datasets`` folder, which ``stage=sft`` /
``stage=grpo`` (``stage.train_data=``) and ``stage=distill`` read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medgr2.configs.stages import SelectStageConfig
from medgr2.data.dedupe import pool_dedupe_keys
from medgr2.data.pools import SCORE_HINT, SelectionError, open_pool, pool_identity
from medgr2.data.rows import save_rows
from medgr2.data.selection import select
from medgr2.pipeline.common import cache_dir, fingerprint, output_dir, to_dict, with_stage
from medgr2.pipeline.stage import Artifact
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_write_json

log = logging.getLogger(__name__)

SELECTION_META = "selection_meta.json"
SHORTCUTS = ("k", "tau", "allow_overlap")


def selection_settings(cfg: DictConfig) -> dict[str, Any]:
    """The effective selection settings: the ``select`` group, with the top-level shortcuts
    (``k=``, ``tau=``, ``allow_overlap=``) taking precedence when they are not null."""
    settings = dict(to_dict(cfg.select))
    for key in SHORTCUTS:
        if cfg.get(key) is not None:
            settings[key] = to_dict(cfg.get(key))
    settings.setdefault("allow_fewer", False)
    settings.setdefault("seed", int(cfg.get("seed", 0)))
    return settings


def default_pool(cfg: DictConfig) -> Path:
    """Where ``stage=score`` with the settings under ``stage.score`` writes by default.

    :func:`medgr2.pipeline.score.output_path` (``<cache>/scored/scored-<input+model key>``).
    """
    from medgr2.pipeline import score

    node = cfg.stage.get("score")
    if node is None:
        raise SelectionError(f"stage.pool is not set and this stage has no `score` settings: {SCORE_HINT}")
    try:
        return score.output_path(with_stage(cfg, node))
    except FileNotFoundError as exc:  # no R_φ or no candidates yet
        raise SelectionError(f"no scored pool yet ({exc}): {SCORE_HINT}") from exc


def _existing_paths(value: Any) -> list[str]:
    if value in (None, "", []):
        return []
    if isinstance(value, str | Path):
        return [str(value)]
    return [str(v) for v in to_dict(value)]


def run_select(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """Select from ``stage.pool`` (default: the score stage's output) into ``stage.out_dir``."""
    return select_candidates(cfg, tracker)[0]


@dataclass(frozen=True)
class _Plan:
    """What a selection reads and where it goes: the pool, D_gen to exclude, the settings, the cached product."""

    pool_path: Path
    pool: Any
    existing: list[str]
    settings: dict[str, Any]
    selection: Artifact


def _plan(cfg: DictConfig) -> _Plan:
    s = SelectStageConfig.from_node(to_dict(cfg.stage))  # unknown keys and bad values fail here, before any work
    settings = selection_settings(cfg)
    pool_path = Path(s.pool) if s.pool else default_pool(cfg)
    if not pool_path.exists():
        raise SelectionError(f"the candidate pool {pool_path} does not exist: {SCORE_HINT}")
    pool = open_pool(pool_path)
    use_existing = [] if settings["allow_overlap"] else _existing_paths(s.existing)
    missing = [e for e in use_existing if not Path(e).exists()]
    if missing:
        raise SelectionError(f"stage.existing (D_gen) not found: {missing}")
    # Only the settings the method uses key the output: a seed sweep reuses one TopK selection.
    unused = {"topk": ("tau", "seed"), "randk": ("tau",), "threshold": ("k", "seed"), "all": ("k", "tau", "seed")}
    relevant = {k: v for k, v in settings.items() if k not in unused.get(str(settings["method"]), ())}
    key = fingerprint("select-v1", pool.identity(), [pool_identity(e) for e in use_existing], relevant)
    path = Path(s.out_dir) if s.out_dir else cache_dir(cfg) / "selected" / f"sel-{key}"
    return _Plan(pool_path, pool, use_existing, settings, Artifact(path, key, SELECTION_META))


def output_path(cfg: DictConfig) -> Path:
    """Where ``stage=select`` with these settings writes (``stage.out_dir``, else
    ``<cache>/selected/sel-<key>``, keyed by the pool, D_gen and the settings the method uses; it may not
    exist yet).

    :raises SelectionError: no pool yet (or a missing ``stage.existing``): the key needs them.
    """
    return _plan(cfg).selection.path


def select_candidates(cfg: DictConfig, tracker: Tracker) -> tuple[dict[str, float], Path]:
    """:func:`run_select`'s work; returns (metrics, folder of the selected rows)."""
    s = SelectStageConfig.from_node(to_dict(cfg.stage))
    plan = _plan(cfg)
    settings, pool, pool_path, use_existing, selection = (plan.settings, plan.pool, plan.pool_path, plan.existing,
                                                          plan.selection)
    used = _used_by(str(settings["method"]))
    for key in ("k", "tau"):
        if cfg.get(key) is not None and key != used:
            log.warning("%s=%s is ignored by select=%s", key, cfg.get(key), settings["method"])
    allow_overlap = bool(settings["allow_overlap"])
    if _existing_paths(s.existing) and allow_overlap:
        log.warning("stage.existing is ignored: allow_overlap=true keeps candidates already in D_gen")
    if selection.meta() is not None:
        log.info("reusing the identical selection in %s", selection.path)

    def build(tmp: Path) -> dict[str, Any]:
        exclude = set()
        for e in use_existing:
            exclude |= pool_dedupe_keys(e, batch_size=int(s.batch_size))
        result = select(
            pool,
            str(settings["method"]),
            k=settings.get("k"),
            tau=settings.get("tau"),
            seed=int(settings.get("seed") or 0),
            exclude_keys=exclude or None,
            allow_overlap=allow_overlap,
            allow_fewer=bool(settings.get("allow_fewer")),
            batch_size=int(s.batch_size),
            stratify=settings.get("stratify") or None,
        )
        save_rows(pool, tmp, result.positions)
        return {"pool": str(pool_path), "existing": use_existing, "settings": settings, **result.summary()}

    meta = selection.get_or_build(build)
    out = selection.path
    if meta["n_selected"] == 0:
        log.warning("the selection is empty (%s on %d candidates): later stages will have no data",
                    settings["method"], meta["n_pool"])
    metrics = {f"select/{k}": float(v) for k, v in meta.items()
               if k.startswith(("n_", "score_")) and isinstance(v, int | float)}
    tracker.log_metrics(metrics)
    tracker.set_tags({"select.output": str(out), "select.pool": str(pool_path), "select.method": settings["method"]})
    report = output_dir(cfg) / SELECTION_META
    atomic_write_json(report, {**meta, "output": str(out)})
    tracker.log_artifact(report)
    print(f"selected {meta['n_selected']} of {meta['n_pool']} candidates ({settings['method']}; "
          f"{meta['n_overlap']} overlapping D_gen, {meta['n_duplicates']} duplicates, "
          f"{meta['n_unscored']} unscored dropped) -> {out}")
    return metrics, out


def _used_by(method: str) -> str | None:
    return {"topk": "k", "randk": "k", "threshold": "tau"}.get(method)


__all__ = ["default_pool", "output_path", "run_select", "select_candidates", "selection_settings"]
