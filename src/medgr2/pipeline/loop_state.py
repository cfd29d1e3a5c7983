"""The closed loop's identity and its record of finished steps (``stage=loop``, :mod:`medgr2.pipeline.loop`).

A loop is identified by its resolved config minus what only changes where or how loudly it runs
(:func:`loop_key`); its work lives in :func:`loop_dir`, where :class:`LoopState` records each finished step
with its outputs and metrics so that a rerun of the same command resumes at the step it stopped in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medgr2.pipeline.common import fingerprint, to_dict
from medgr2.utils.io import atomic_write_json

STATE_FILE = "loop_state.json"
# Keys that change where or how loudly a run works, not what it computes: out of the loop's identity.
OPERATIONAL_KEYS = ("paths", "logger", "print_config", "cpu_threads", "callbacks", "checkpoint")
OPERATIONAL_TRAINER_KEYS = ("enable_progress_bar", "log_every_n_steps")
# The trainer option's label lived inside the trainer node as ``name`` when loop keys were first made; it is
# hashed there still, so loops started before it moved out (to ``trainer_name``) keep their folders.
TRAINER_LABEL = "trainer_name"


def loop_key(cfg: DictConfig) -> str:
    """Identity of a loop: the resolved config minus operational keys (paths, logging, progress bars,
    checkpoint cadence)."""
    parts = {}
    for key in cfg:
        if key in (*OPERATIONAL_KEYS, TRAINER_LABEL):
            continue
        value = to_dict(cfg[key])
        if key == "trainer" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in OPERATIONAL_TRAINER_KEYS}
            if cfg.get(TRAINER_LABEL) is not None:
                value["name"] = str(cfg[TRAINER_LABEL])
        if key == "stage" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "dir"}
        parts[str(key)] = value
    return fingerprint("loop-v1", parts)


def loop_dir(cfg: DictConfig) -> Path:
    """Where the loop keeps its state and per-iteration artifacts (stable for a given config, so reruns resume)."""
    if cfg.stage.get("dir"):
        return Path(cfg.stage.dir).resolve()
    name = str(cfg.get("experiment_name") or "default")
    return Path(cfg.paths.root).resolve() / "outputs" / "loops" / f"{name}-{loop_key(cfg)}"


class LoopState:
    """Finished steps of one loop (``<loop_dir>/loop_state.json``), rewritten atomically after each step."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        self.path = folder / STATE_FILE
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        if data and data.get("key") != key:
            raise ValueError(f"{folder} holds a loop with another config (key {data.get('key')} != {key}): "
                             "set stage.dir to a new folder or remove the old one")
        self.steps: dict[str, dict[str, Any]] = dict(data.get("steps", {}))

    def get(self, name: str) -> dict[str, Any] | None:
        return self.steps.get(name)

    def record(self, name: str, outputs: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self.steps[name] = {"outputs": dict(outputs), "metrics": {k: float(v) for k, v in metrics.items()}}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"key": self.key, "steps": self.steps})
