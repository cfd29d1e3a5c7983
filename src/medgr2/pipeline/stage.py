"""The skeleton every stage shares: MLflow run bookkeeping, one fit-and-export, one cached-product layer.

A stage reads top to bottom with these (lightning-hydra-template's ``train()`` is the model)::

    module, train_dl, val_dl = ...                       # what this stage trains, on what
    metrics = fit_and_export(cfg, tracker, module, train_dl, val_dl, max_steps=..., out=out,
                             export_to=out / "policy", evaluate=True)

* :func:`tracked_run` / :func:`child_run`: a run (the job's, or a nested one for work done on the way) that
  ends FINISHED, or FAILED when the block raises (the exception goes on).
* :func:`fit_and_export`: Trainer from the config, fit, export on global rank 0, evaluate there, barrier.
* :class:`Artifact`: a cached product — a folder built under a key, with one meta format
  (``{"key": <key>, ...}`` in a JSON file inside it), written atomically so a folder with a matching meta is
  complete, reused when the key matches and built otherwise.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medgr2.pipeline.common import build_trainer
from medgr2.pipeline.evaluate import evaluate_model
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

#: The meta file of an :class:`Artifact` unless the product names its own.
ARTIFACT_META = "artifact_meta.json"


# ============================================================================================ MLflow runs


@contextmanager
def tracked_run(tracker: Tracker) -> Iterator[Tracker]:
    """End ``tracker``'s run FINISHED after the block, FAILED when it raises (the exception propagates)."""
    try:
        yield tracker
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")


@contextmanager
def child_run(tracker: Tracker, name: str, tags: Mapping[str, str] | None = None) -> Iterator[Tracker]:
    """A nested run ``name`` under ``tracker`` (see :meth:`Tracker.child`), ended as :func:`tracked_run` ends it."""
    with tracked_run(tracker.child(name, tags)) as child:
        yield child


# ============================================================================================ training


def fit_and_export(cfg: DictConfig, tracker: Tracker, module, train_dl, val_dl=None, *, max_steps: int,
                   out: Path, export_to: Path, checkpoints: bool = True, val_every: int | None = None,
                   ckpt_path: str | None = None, extra_callbacks: list | None = None, label: str | None = None,
                   evaluate: bool = False, export_tag: str | None = None,
                   after_fit: Callable[[Any], None] | None = None,
                   on_export: Callable[[Path], None] | None = None) -> dict[str, float]:
    """Train ``module`` with a Trainer built from ``cfg`` (:func:`~medgr2.pipeline.common.build_trainer`), then
    on global rank 0 export it to ``export_to``, tag the run with ``{export_tag: export_to}``, call
    ``on_export(export_to)`` and, when ``evaluate``, evaluate ``module.model`` (its ``test/*`` metrics are
    returned); every rank then waits at a barrier so no process reads a half-written export.

    ``checkpoints``: ModelCheckpoint into ``out/checkpoints`` (resumable with ``ckpt_path``); ``after_fit``
    runs on every rank between fit and export (e.g. a per-rank audit file).
    """
    trainer = build_trainer(cfg, tracker, max_steps=max_steps, ckpt_dir=out / "checkpoints" if checkpoints else None,
                            val_every=val_every, extra_callbacks=extra_callbacks, label=label)
    with warnings.catch_warnings():
        # Under manual optimization (GRPO) Lightning warns that checkpoints hold the post-step state: intended.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
    if after_fit is not None:
        after_fit(trainer)
    metrics: dict[str, float] = {}
    if trainer.is_global_zero:
        module.export(export_to)
        if export_tag:
            tracker.set_tags({export_tag: str(export_to)})
        if on_export is not None:
            on_export(export_to)
        if evaluate:
            metrics.update(evaluate_model(cfg, module.model, module.processor, tracker, out))
    trainer.strategy.barrier()
    return metrics


# ============================================================================================ cached products


def _json_value(value: Any) -> Any:
    """``value`` as it reads back from its meta file (tuples become lists, unknown types strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class Artifact:
    """A cached product: the folder ``path``, built under ``key`` (any JSON value: a hash, a stamp).

    Its meta file (``meta_file`` inside the folder) is ``{"key": key, ...what the build reported}`` and is
    written into the temporary folder before it is renamed into place: a folder whose meta holds this key is
    a complete build of it. A folder with another key (e.g. a user's ``out_dir`` reused for other settings)
    is rebuilt. ``legacy_key``: the field a product's meta recorded its key under before this format (its
    existing folders stay valid: rebuilding one could change what depends on it, e.g. a dataset fingerprint).
    """

    path: Path
    key: Any
    meta_file: str = ARTIFACT_META
    legacy_key: str | None = None

    def meta(self) -> dict[str, Any] | None:
        """The meta of the folder when it holds this key's product, else None."""
        f = Path(self.path) / self.meta_file
        if not f.exists():
            return None
        meta = json.loads(f.read_text())
        key = _json_value(self.key)
        if meta.get("key") == key or (self.legacy_key is not None and meta.get(self.legacy_key) == key):
            return meta
        return None

    def get_or_build(self, build: Callable[[Path], Mapping[str, Any] | None], rebuild: bool = False) -> dict[str, Any]:
        """The meta of the cached product, building it first when absent (or when ``rebuild``): ``build(tmp)``
        writes the product into the temporary folder ``tmp`` and returns what its meta should record beside
        the key."""
        meta = None if rebuild else self.meta()
        if meta is not None:
            log.debug("reusing %s", self.path)
            return meta
        with atomic_dir(Path(self.path)) as tmp:
            meta = {**dict(build(tmp) or {}), "key": _json_value(self.key)}
            atomic_write_json(tmp / self.meta_file, meta)
        return meta


__all__ = ["ARTIFACT_META", "Artifact", "child_run", "fit_and_export", "tracked_run"]
