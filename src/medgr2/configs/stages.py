"""Typed configs of the data stages and the evaluation: ``stage=generate|score|select|pretrain|inspect|evaluate``
and the top-level ``evaluate`` group. One default per key, documented here; validated in ``__post_init__`` with
one-line errors naming the key. The stage code reads its node with ``from_node`` before doing any work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medgr2.configs.base import NodeConfig, check, non_negative, one_of, positive

SCORE_SOURCES = ("generated", "split")
#: Nodes of ``stage=score`` / ``stage=select`` that hold another stage's settings (read by that stage's code).
SCORE_STEP_NODES = ("rm", "generate")
SELECT_STEP_NODES = ("score",)


@dataclass
class EvaluateConfig(NodeConfig):
    """The ``evaluate`` group (conf/evaluate/): greedy decoding, answer extraction, accuracy / F1 / AUC."""

    node_name = "evaluate (the evaluate group)"

    split: str = "test"
    limit: int | None = None  # evaluate the first N questions only (None: all)
    batch_size: int = 64
    max_new_tokens: int = 64  # a SynthMed verify response is <= 55 tokens with the tiny tokenizer
    protocol: str = "lenient"  # how a response is scored: lenient | medr1 | omnimedvqa | letter (docs/omnimedvqa.md)
    weights: str | None = None  # stage=evaluate: a policy folder (e.g. outputs/.../policy); None: the base

    def __post_init__(self) -> None:
        positive("evaluate.limit", self.limit, allow_none=True)
        positive("evaluate.batch_size", self.batch_size)
        positive("evaluate.max_new_tokens", self.max_new_tokens)
        from medgr2.evaluation.protocols import PROTOCOLS  # lazily: that module needs datasets

        check(self.protocol in PROTOCOLS,
              f"evaluate.protocol: unknown evaluation protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")


@dataclass
class EvaluateStageConfig(NodeConfig):
    """``stage=evaluate``: evaluate a policy (``evaluate.weights``) on ``evaluate.split``; its settings are the
    ``evaluate`` group's (:class:`EvaluateConfig`)."""

    node_name = "evaluate"

    name: str = "evaluate"


@dataclass
class GenerateConfig(NodeConfig):
    """``stage=generate`` (paper §3, Algorithm 1 line 3; also the loop's ``stage.generate``): candidates from the
    ``generator`` backend with the ``prompt`` strategy, in resumable Parquet shards (docs/generation.md)."""

    node_name = "generate"

    name: str = "generate"
    source_split: str = "train"  # split whose images (and, for `simulated`, ground truth) are used
    # source records used (None: the whole split); ~95% survive validation, so a default pool holds > 2,000
    # candidates (stage=select select=topk k=2000 works)
    n_sources: int | None = 2200
    source_offset: int = 0  # skip this many source records first (the loop gives each iteration new images)
    where: Any = None  # keep only sources matching {column: value or [values]}, e.g. {modality: CT}; None: all
    samples_per_source: int = 1  # candidates requested per source image
    iteration: int = 0  # Algorithm 1 iteration (in ids and provenance)
    seed: int = 0  # request seeds; conf/stage/generate.yaml sets ${seeds.pool}
    shard_size: int = 256  # requests per committed shard
    question_types: Any = None  # a list to cycle through; None: each source's own question type
    out_dir: str | None = None  # None: <cache>/candidates/cand-<config fingerprint> (reruns resume; sweeps share it)
    export: bool = True  # when complete, also save <out_dir>/export/candidates (a datasets folder for stage=score)
    export_partial: bool = False  # export even when requests are still pending (API errors / spend cap / quota)
    progress: bool = True

    def __post_init__(self) -> None:
        positive("stage.n_sources", self.n_sources, allow_none=True)
        non_negative("stage.source_offset", self.source_offset)
        positive("stage.samples_per_source", self.samples_per_source)
        non_negative("stage.iteration", self.iteration)
        positive("stage.shard_size", self.shard_size)
        check(self.where is None or isinstance(self.where, Mapping),
              f"stage.where must be a mapping {{column: value or [values]}} or null, got {self.where!r}")
        check(self.question_types is None or isinstance(self.question_types, list | tuple),
              f"stage.question_types must be a list or null, got {self.question_types!r}")


@dataclass
class ScoreConfig(NodeConfig):
    """``stage=score`` (also the loop's ``stage.score``): score candidate triplets with R_φ; writes a ``score``
    column (+ provenance) to ``output``; resumable. Its ``rm`` / ``generate`` nodes are stage=reward's and
    stage=generate's settings (:data:`SCORE_STEP_NODES`)."""

    node_name = "score"
    node_ignore = SCORE_STEP_NODES

    name: str = "score"
    model: str | None = None  # an R_φ export folder; None: the cached one for stage.rm (trained if missing)
    input: str | None = None  # a saved datasets folder of candidates; None: see `source`
    # with input=None: generated (the export of stage=generate with the settings under stage.generate, i.e.
    # `python train.py stage=generate` on the same overrides) | split (the benchmark split: its reference answers)
    source: str = "generated"
    split: str = "train"  # source=split: the benchmark split scored
    size: int | None = None  # rows scored (None: all)
    response_key: str = "response"  # column holding the response; rows without it are scored on rationale+answer
    output: str | None = None  # None: <cache>/scored/scored-<input+model key>
    batch_size: int = 64
    chunk_size: int = 512  # rows per atomically saved chunk (a rerun skips finished chunks)
    tau: float | None = 5.0  # only for the logged share of rows with score > tau
    progress: bool = True

    def __post_init__(self) -> None:
        one_of("stage.source", self.source, SCORE_SOURCES)
        positive("stage.size", self.size, allow_none=True)
        positive("stage.batch_size", self.batch_size)
        positive("stage.chunk_size", self.chunk_size)


@dataclass
class SelectStageConfig(NodeConfig):
    """``stage=select`` (Algorithm 1 lines 5-9): where the pool and D_gen are and where the selection goes; the
    method and its k / tau are the ``select`` group's (validated by :mod:`medgr2.data.selection`). Its ``score``
    node is the stage=score settings whose default output is the default pool."""

    node_name = "select"
    node_ignore = SELECT_STEP_NODES

    name: str = "select"
    # a scored dataset (stage=score output), Parquet file(s) or a generation out_dir; None: stage=score's default
    # output for the settings under stage.score
    pool: Any = None
    # D_gen so far: a dataset folder or a list of them; with allow_overlap=false their items (same image +
    # normalised question) are not selected again
    existing: Any = None
    out_dir: str | None = None  # None: <cache>/selected/sel-<pool + existing + select key>
    batch_size: int = 8192  # rows read per Arrow batch

    def __post_init__(self) -> None:
        positive("stage.batch_size", self.batch_size)
        check(self.existing is None or isinstance(self.existing, str | list | tuple),
              f"stage.existing must be a dataset folder, a list of them or null, got {self.existing!r}")


@dataclass
class PretrainConfig(NodeConfig):
    """``stage=pretrain``: build (or find) the pretrained base of the tiny model (``model.pretrain`` holds its
    settings). The repository ships the default config's base (src/medgr2/assets/base/)."""

    node_name = "pretrain"

    name: str = "pretrain"
    ship: bool = False  # True: pretrain anew and make the result the shipped base (`make base`; docs/architecture.md)


@dataclass
class InspectConfig(NodeConfig):
    """``stage=inspect``: counts per modality x question type, option counts, skipped records by reason."""

    node_name = "inspect"

    name: str = "inspect"
    splits: Any = ("train", "val", "test")  # splits counted
    sequences: bool = True  # also image tokens / prompt+answer lengths under the model config (its tokenizer)
    seq_rows: int | None = 2000  # rows read for those (image headers only); None: all

    def __post_init__(self) -> None:
        check(isinstance(self.splits, list | tuple) and len(self.splits) > 0,
              f"stage.splits must be a non-empty list, got {self.splits!r}")
        positive("stage.seq_rows", self.seq_rows, allow_none=True)


__all__ = ["SCORE_SOURCES", "SCORE_STEP_NODES", "SELECT_STEP_NODES", "EvaluateConfig", "EvaluateStageConfig",
           "GenerateConfig", "InspectConfig", "PretrainConfig", "ScoreConfig", "SelectStageConfig"]
