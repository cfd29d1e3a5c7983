"""``stage=score``: batched no-grad scoring of a dataset of candidate triplets with R_φ; writes a ``score``
column (and a ``reward`` entry into each row's provenance) to :func:`output_path`. The work is done by the
resumable scorer (:func:`medgr2.pipeline.resumable_scoring.score_dataset`): a killed run resumes where it
stopped.

Which R_φ: ``stage.model``, else the one for ``stage.rm`` (:func:`medgr2.pipeline.reward.ensure_reward_model`:
shipped, cached, or trained first). Which rows: ``stage.input``, else the candidates ``stage=generate`` makes
with the settings under ``stage.generate`` (``source=generated``), else the benchmark split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig

from medgr2.pipeline.common import cache_dir, fingerprint, load_split
from medgr2.pipeline.resumable_scoring import model_id, score_dataset
from medgr2.pipeline.reward import ensure_reward_model, find_reward_model
from medgr2.pipeline.reward import output_path as rm_output_path
from medgr2.pipeline.tracking import Tracker


def generated_candidates(cfg: DictConfig) -> Path:
    """The exported candidates of ``stage=generate`` run with the settings under ``cfg.stage.generate``."""
    from medgr2.pipeline import generate
    from medgr2.pipeline.common import with_stage

    export = generate.export_path(generate.output_path(with_stage(cfg, cfg.stage.generate)))
    if not export.exists():
        raise FileNotFoundError(f"no generated candidates at {export}: run `python train.py stage=generate` with the "
                                "same overrides first, or pass stage.input=<a candidates dataset> "
                                "(stage.source=split scores the benchmark's reference answers)")
    return export



def score_input(cfg: DictConfig) -> datasets.Dataset:
    """The rows ``stage=score`` scores (see the module docstring), at most ``stage.size``."""
    s = cfg.stage
    if s.get("input"):
        ds = datasets.load_from_disk(str(s.input))
    elif s.get("source", "split") == "generated" and s.get("generate") is not None:
        ds = datasets.load_from_disk(str(generated_candidates(cfg)))
    else:
        ds = load_split(cfg, str(s.split), limit=s.get("size"))
    if s.get("size") and len(ds) > int(s.size):
        ds = ds.select(range(int(s.size)))
    return ds



def _keyed_output(cfg: DictConfig, ds: datasets.Dataset, mid: Mapping[str, Any]) -> Path:
    """``stage.output``, else ``<cache>/scored/scored-<input + model + response column key>``."""
    s = cfg.stage
    if s.get("output"):
        return Path(s.output)
    return cache_dir(cfg) / "scored" / f"scored-{fingerprint(ds._fingerprint, len(ds), mid, s.response_key)}"


def output_path(cfg: DictConfig) -> Path:
    """Where ``stage=score`` with ``cfg.stage`` writes (it may not exist yet).

    The default location is keyed by the input and the R_φ export, so both must exist already.

    :raises FileNotFoundError: no R_φ for the settings yet (``no reward model at …``), or no input (e.g. the
        generated candidates are not there yet).
    """
    s = cfg.stage
    if s.get("output"):
        return Path(s.output)
    model_path = Path(s.model) if s.get("model") else (find_reward_model(cfg) or rm_output_path(cfg))
    if not model_path.exists():
        raise FileNotFoundError(f"no reward model at {model_path}")
    return _keyed_output(cfg, score_input(cfg), model_id(model_path))


def run_score(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """``stage=score``: see :func:`score_candidates`."""
    return score_candidates(cfg, tracker)[0]


def score_candidates(cfg: DictConfig, tracker: Tracker) -> tuple[dict[str, float], Path]:
    """Score ``stage.input`` (or the benchmark split) with R_φ; returns (metrics, scored dataset folder)."""
    from medgr2.modules.reward_scorer import RewardScorer

    s = cfg.stage
    model_path = Path(s.model) if s.get("model") else ensure_reward_model(cfg, tracker)
    ds = score_input(cfg)
    mid = model_id(model_path)
    output = _keyed_output(cfg, ds, mid)
    scorer = RewardScorer(model_path, batch_size=int(s.batch_size))
    scored = score_dataset(ds, scorer, output, chunk_size=int(s.chunk_size), batch_size=int(s.batch_size),
                           response_key=str(s.response_key), progress=bool(s.get("progress", True)),
                           model_id=mid)
    scores = scored["score"]
    n = len(scores)
    mean = sum(scores) / n if n else math.nan
    metrics = {"score/n": float(n), "score/mean": mean}
    tau = s.get("tau")
    if tau is not None and n:
        metrics["score/above_tau"] = sum(x > float(tau) for x in scores) / n
    tracker.log_metrics(metrics)
    tracker.set_tags({"score.output": str(output), "score.model": str(model_path)})
    print(f"scored {n} rows (mean {mean:.3f}) with {model_path} -> {output}")
    return metrics, output


__all__ = ["generated_candidates", "output_path", "run_score", "score_candidates", "score_input"]
