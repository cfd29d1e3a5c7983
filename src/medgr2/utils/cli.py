"""What ``train.py`` does around a stage: check the config before anything heavy runs, and turn our own
errors into one clear line instead of a traceback.

:func:`check_config` runs before the pipeline (Lightning, MLflow, models) is imported and before an MLflow
run exists, so a bad value (``k=-1``, ``tau=11``, ``source=PET``, a wrong ``data.root``) fails in seconds —
not after the loop has generated and scored a pool — with a message naming the key and the value.
:func:`clean_errors` prints ``error: <message>`` and exits with status 2 for errors raised by medgr2's own
code (bad values, bad data, missing files or keys); errors from inside libraries keep their traceback, and
``HYDRA_FULL_ERROR=1`` keeps it for ours too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: Exception types whose message is meant for the user when medgr2's own code raises them.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, ImportError)
#: Stages that select with the ``select`` group (and so use ``k`` / ``tau``).
SELECTING_STAGES = ("select", "loop")
_SHORTCUTS = ("k", "tau", "allow_overlap")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the value."""


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def selection_from_config(cfg: DictConfig) -> dict[str, Any]:
    """The ``select`` group with the top-level shortcuts ``k=`` / ``tau=`` / ``allow_overlap=`` applied —
    the same merge as :func:`medgr2.pipeline.select.selection_settings` (a test keeps them equal), without
    importing the pipeline."""
    settings = dict(_plain(cfg.get("select")) or {})
    for key in _SHORTCUTS:
        if cfg.get(key) is not None:
            settings[key] = _plain(cfg.get(key))
    settings.setdefault("allow_fewer", False)
    return settings


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for config values that cannot work, naming the key and the value."""
    stage = str(cfg.stage.name)
    if stage in SELECTING_STAGES:
        _check_selection(cfg, stage)
    _check_source(cfg)
    _check_data_root(cfg)


def _check_selection(cfg: DictConfig, stage: str) -> None:
    from medgr2.data.pools import SelectionError, open_pool
    from medgr2.data.selection import check_settings

    sel = selection_from_config(cfg)
    method, k, allow_fewer = str(sel.get("method")), sel.get("k"), bool(sel.get("allow_fewer"))
    n_pool = None
    s = cfg.stage
    if stage == "select" and s.get("pool") and Path(str(s.pool)).exists():
        try:
            n_pool = open_pool(str(s.pool)).num_rows
        except SelectionError:
            n_pool = None  # the stage says what is wrong with the pool itself
    try:
        check_settings(method, k, sel.get("tau"), n_pool, allow_fewer)
    except SelectionError as exc:
        raise ConfigError(f"select={method}: {exc}") from None
    gen = s.get("generate") if stage == "loop" else None
    if gen is not None and method in ("topk", "randk") and not allow_fewer and gen.get("n_sources"):
        # The pool of an iteration holds at most n_sources x samples_per_source candidates: a larger k
        # would fail at the select step, after generation and scoring have been paid for.
        most = int(gen.n_sources) * int(gen.get("samples_per_source") or 1)
        if int(k) > most:
            raise ConfigError(
                f"k={k} is larger than the at most {most} candidates an iteration generates "
                f"(stage.generate.n_sources={gen.n_sources} x samples_per_source="
                f"{gen.get('samples_per_source') or 1}): lower k, raise stage.generate.n_sources, "
                "or pass select.allow_fewer=true"
            )


def _check_source(cfg: DictConfig) -> None:
    source = cfg.get("source")
    if source in (None, ""):
        return
    from medgr2.data.schema import RecordError, canonical_modality, canonical_question_type

    axis = str(cfg.get("source_axis") or "modality")
    if axis not in ("modality", "question_type"):
        raise ConfigError(f"source_axis={axis!r}: choose modality or question_type")
    canon = canonical_modality if axis == "modality" else canonical_question_type
    for value in _plain(source) if OmegaConf.is_list(source) else [source]:
        try:
            canon(str(value))
        except RecordError as exc:
            raise ConfigError(f"source={value} (source_axis={axis}): {exc}") from None


def _check_data_root(cfg: DictConfig) -> None:
    data = cfg.get("data")
    if data is None or data.get("name") != "omnimedvqa" or not data.get("root"):
        return  # no root: the stage that needs the data says so
    from medgr2.data.omnimedvqa import detect_layout

    root = Path(str(data.root)).expanduser()
    try:
        detect_layout(root)
    except FileNotFoundError as exc:
        raise ConfigError(f"data.root={data.root}: {exc}") from None


def _raised_by_medgr2(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    try:
        return Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)
    except OSError:
        return False


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 (outside Hydra: not a multirun)
        return False


@contextmanager
def clean_errors() -> Iterator[None]:
    """Errors that medgr2 raises on purpose (``ValueError``, ``OSError``, ``RuntimeError``, ``ImportError``
    raised in its own code) -> ``error: <message>`` on stderr and exit status 2. Everything else, every error
    with ``HYDRA_FULL_ERROR=1``, and every error of a multirun job (Hydra records the failed job) is re-raised
    unchanged."""
    try:
        yield
    except USER_ERRORS as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _multirun() or not _raised_by_medgr2(exc):
            raise
        print("medgr2 stopped (HYDRA_FULL_ERROR=1 shows the traceback):", file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


__all__ = ["ConfigError", "check_config", "clean_errors", "selection_from_config"]
