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
  complete, reused when the key matches and built otherwise; under DDP rank 0 publishes it, the other ranks
  wait for it.
"""

from __future__ import annotations

import json
import logging
import time
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


#: How long a process that does not publish a product (a rank other than 0) waits for rank 0's: a stuck or
#: dead rank 0 then ends in a clear error rather than a silent hang.
WAIT_TIMEOUT_S = 6 * 3600.0


class _NotThePublisher(Exception):
    """Raised inside :func:`atomic_dir` by a rank that took part in a collective build but does not publish:
    its temporary folder is discarded."""


def _global_rank() -> int:
    """This process's global rank: 0 without DDP; Lightning sets it from the environment at import (a DDP
    child process) and again when a Trainer sets up, so it is exact after a fit."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _json_value(value: Any) -> Any:
    """``value`` as it reads back from its meta file (tuples become lists, unknown types strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class Artifact:
    """A cached product: the folder ``path``, built under ``key`` (any JSON value: a hash, a stamp).

    Its meta file (``meta_file`` inside the folder) is ``{"key": key, ...what the build reported}`` and is
    written into the temporary folder before it is renamed into place: a folder whose meta holds this key is
    a complete build of it. A folder with another key (e.g. a user's ``out_dir`` reused for other settings)
    is rebuilt. Folders written before this format stay valid (rebuilding one could change what depends on
    it, e.g. a dataset fingerprint, or cost an hour of training):

    * ``legacy_key``: the field a product's meta recorded its key under before;
    * ``ready``: for a product that carries its key in its folder name and recorded none (the pretrained
      base and an R_φ export had no meta; D_grade's meta had no key), a folder whose meta file is missing or
      holds no key is this key's product when ``ready(folder)`` says it is complete.

    Under DDP (several processes), rank 0 builds and publishes; see :meth:`get_or_build`.
    """

    path: Path
    key: Any
    meta_file: str = ARTIFACT_META
    legacy_key: str | None = None
    ready: Callable[[Path], bool] | None = None

    def meta(self) -> dict[str, Any] | None:
        """The meta of the folder when it holds this key's product, else None."""
        folder = Path(self.path)
        f = folder / self.meta_file
        key = _json_value(self.key)
        try:
            meta = json.loads(f.read_text())
        except FileNotFoundError:  # none yet, or the folder is between the two renames of its replacement
            meta = None
        if meta is not None and ("key" in meta or (self.legacy_key is not None and self.legacy_key in meta)):
            return meta if meta.get("key", meta.get(self.legacy_key)) == key else None
        # No key recorded (no meta, or one from before this format): the folder's name carries the key.
        if self.ready is not None and self.ready(folder):
            return {**(meta or {}), "key": key}
        return None

    def get_or_build(self, build: Callable[[Path], Mapping[str, Any] | None], rebuild: bool = False,
                     collective: bool = False, wait_s: float = WAIT_TIMEOUT_S) -> dict[str, Any]:
        """The meta of the cached product, building it first when absent (or when ``rebuild``): ``build(tmp)``
        writes the product into the temporary folder ``tmp`` and returns what its meta should record beside
        the key.

        Under DDP only global rank 0 publishes the folder; the other ranks wait until it is there (polling its
        meta, at most ``wait_s`` seconds) and return its meta. ``collective``: the build takes every rank (it
        trains with the Trainer of a DDP job, which exports on rank 0 only): each rank runs ``build`` in a
        folder of its own, rank 0 publishes its folder and the others discard theirs. Otherwise ranks other
        than 0 do not build at all.
        """
        meta = None if rebuild else self.meta()
        if meta is not None:
            log.debug("reusing %s", self.path)
            return meta
        if not collective and _global_rank() != 0:
            return self._wait(None, wait_s)
        # Every rank enters a collective build before rank 0 can leave it (the fit synchronises them), so a
        # meta written after this moment is the rebuilt one.
        since = time.time()
        try:
            with atomic_dir(Path(self.path)) as tmp:
                built = dict(build(tmp) or {})
                # The rank is read after the build: a Trainer that ran inside it set the exact global rank.
                if _global_rank() != 0:
                    raise _NotThePublisher
                meta = {**built, "key": _json_value(self.key)}
                atomic_write_json(tmp / self.meta_file, meta)
        except _NotThePublisher:
            return self._wait(since if rebuild else None, wait_s)
        return meta

    def _wait(self, since: float | None, wait_s: float) -> dict[str, Any]:
        """Rank 0's meta once it has published the folder (with ``since``: a meta written after that time, so
        a collective rebuild is not answered by the folder it replaces)."""
        deadline = time.monotonic() + wait_s
        log.info("waiting for rank 0 to publish %s", self.path)
        while True:
            meta = self.meta()
            f = Path(self.path) / self.meta_file
            if meta is not None and (since is None or (f.exists() and f.stat().st_mtime >= since)):
                return meta
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank 0 did not publish {self.path} within {wait_s:.0f} s (is it still running?)")
            time.sleep(0.5)


__all__ = ["ARTIFACT_META", "WAIT_TIMEOUT_S", "Artifact", "child_run", "fit_and_export", "tracked_run"]
