"""MLflow tracking: one run per job, the resolved config (secrets redacted), tags, metrics, artifacts.

``logger=none`` gives a :class:`Tracker` whose methods do nothing, so stages never branch on it.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

# The redaction lives in utils (print_config uses it too); re-exported here for existing imports.
from medgr2.utils.redact import REDACTED, SECRET_PATTERN, redact, resolved_config  # noqa: F401

log = logging.getLogger(__name__)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit(cwd: str | Path | None = None) -> str:
    """Current git commit (with ``-dirty``), or ``unknown`` outside a repository."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """A no-op tracker (``logger=none``); :class:`MLflowTracker` is the real one."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Extra params decided at run time (e.g. the effective decoding settings)."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def lightning_logger(self):
        return False

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def child(self, name: str, tags: Mapping[str, str] | None = None) -> Tracker:
        """A nested run for work done on the way (e.g. building the pretrained base inside ``stage=sft``,
        or one iteration of ``stage=loop``); ``tags`` override the parent's (``stage`` defaults to ``name``)."""
        return Tracker()


class MLflowTracker(Tracker):
    """One MLflow run in a SQLite store; Lightning's ``MLFlowLogger`` is attached to the same run."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str, run_name: str | None,
                 tags: Mapping[str, str], params: Mapping[str, Any], parent_run_id: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
            except Exception:  # created by a parallel job in the meantime
                exp_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = exp.experiment_id
        self.experiment_name = experiment
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        self._tags, self._params, self._artifact_location = dict(tags), params, artifact_location
        flat = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(params).items()}
        items = list(flat.items())
        from mlflow.entities import Param

        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()
              if v is not None and not (isinstance(v, float) and math.isnan(v))]
        for i in range(0, len(ms), 500):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, ("" if v is None else str(v))[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def lightning_logger(self):
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=self.experiment_name, tracking_uri=self.tracking_uri,
                            run_id=self.run_id, log_model=False)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def child(self, name: str, tags: Mapping[str, str] | None = None) -> Tracker:
        return MLflowTracker(self.tracking_uri, self.experiment_name, self._artifact_location, name,
                             {**self._tags, "stage": name, **{k: str(v) for k, v in (tags or {}).items()}},
                             self._params, parent_run_id=self.run_id)


# Overrides that change where or how loudly a job runs, not what it computes: left out of run names and of the
# ``sweep`` tag (the report groups seeds by recipe + sweep).
OPERATIONAL_OVERRIDES = ("paths.", "logger.", "hydra.", "callbacks", "print_config", "cpu_threads",
                         "trainer.enable_progress_bar", "trainer.log_every_n_steps", "checkpoint.")


def job_overrides() -> list[str]:
    """This job's command-line overrides as Hydra saw them (``["experiment=topk", "k=2000", "seed=1"]``), or
    ``[]`` outside a Hydra app (a composed config in a test or a notebook)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []
    except Exception:  # noqa: BLE001 - no Hydra context is not an error
        return []


def sweep_keys(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, str]:
    """What sets this job apart within its recipe: the overrides minus ``experiment``, ``seed`` and the
    operational keys, in command-line order. Without Hydra overrides: the shortcuts ``k``/``tau``/``source``
    that are set."""
    overrides = job_overrides() if overrides is None else overrides
    out: dict[str, str] = {}
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if not sep or key in ("experiment", "seed") or key.startswith(OPERATIONAL_OVERRIDES):
            continue
        out[key] = value
    if not overrides:
        out = {k: str(cfg.get(k)) for k in ("k", "tau", "source") if cfg.get(k) not in (None, "")}
    return out


def run_name(cfg: DictConfig, stage: str, sweep: Mapping[str, str]) -> str:
    """``topk k=2000 seed=1``: the recipe (the stage when there is none), the sweep keys, the seed."""
    recipe = str(cfg.get("experiment_name") or "default")
    # Without a recipe the name starts with the stage, so `stage=<it>` would only repeat it.
    shown = {k: v for k, v in sweep.items() if not (recipe == "default" and k == "stage" and v == stage)}
    parts = [stage if recipe == "default" else recipe, *(f"{k}={v}" for k, v in shown.items())]
    return " ".join([*parts, f"seed={cfg.get('seed', 0)}"])


def make_tracker(cfg: DictConfig, stage: str) -> Tracker:
    """Build the tracker the ``logger`` config group asks for (only on global rank 0)."""
    lcfg = cfg.get("logger")
    if not lcfg or lcfg.get("name", "none") == "none" or int(os.environ.get("RANK", "0")) != 0:
        return Tracker()
    root = Path(cfg.paths.root).resolve()
    sweep = sweep_keys(cfg)
    seeds = {f"seeds.{k}": str(v) for k, v in (cfg.get("seeds") or {}).items()}
    tags = {
        "stage": stage,
        "experiment": str(cfg.get("experiment_name") or "default"),
        "data": str(cfg.data.name),
        "model": str(cfg.model.name),
        "git_commit": git_commit(root),
        # The report groups runs by recipe + ``sweep`` and aggregates over ``seed`` (docs/statistics.md).
        "seed": str(cfg.get("seed", 0)),
        "sweep": " ".join(f"{k}={v}" for k, v in sweep.items()),
        **{f"sweep.{k}": v for k, v in sweep.items()},
        **seeds,
        **{str(k): str(v) for k, v in (lcfg.get("tags") or {}).items()},
    }
    return MLflowTracker(
        tracking_uri=str(lcfg.tracking_uri),
        experiment=str(lcfg.experiment),
        artifact_location=str(lcfg.artifact_location),
        run_name=lcfg.get("run_name") or run_name(cfg, stage, sweep),
        tags=tags,
        params=resolved_config(cfg),
        parent_run_id=lcfg.get("parent_run_id"),
    )
