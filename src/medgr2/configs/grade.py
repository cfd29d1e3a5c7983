"""D_grade's typed config (paper §3, "Multi-Grade Supervision"): ``stage=grade``, and the D_grade part of
``stage=reward`` (R_φ trains on D_grade, built and cached when missing; :mod:`medgr2.pipeline.grade`).

The grades and how their texts are made are :class:`medgr2.data.grade_config.GradeConfig` (the ``grading`` node,
owned by the data layer that builds the rows); this module adds where the reference records come from and the
extra rows beyond the paper's four grades.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medgr2.configs.base import check, from_node, positive
from medgr2.data.grade_config import GradeConfig


@dataclass
class GradeSource:
    """The reference records D_grade is made from."""

    path: str | None = None  # a saved datasets folder of reference records; None: the benchmark split below
    split: str = "train"  # benchmark split the records come from (data.*)
    size: int | None = 2000  # records used (x 4 grades = rows); None: all

    def __post_init__(self) -> None:
        positive("stage.source.size", self.size, allow_none=True)


@dataclass
class GradeStageConfig:
    """``stage=grade``: D_grade under ``<cache>/grade/dgrade-<key>``, keyed by the source and the grading."""

    name: str = "grade"
    source: GradeSource = field(default_factory=GradeSource)
    grading: GradeConfig = field(default_factory=GradeConfig)
    # Beyond the paper's four grades: hard negatives at the irrelevant grade's value — the reference rationale with
    # a wrong answer letter (a hallucinated final answer) — for this share of the records (0: the paper's
    # D_grade). Measured with the tiny VLM: pairwise accuracy 0.51-0.66 without them, 0.63-0.72 with 0.25-0.5, but
    # Spearman learns slower (0.76 after 2,000 steps at 0.25 vs 0.89 after 800 without).
    wrong_letter_rate: float = 0.0
    # Image-grounding negatives at the irrelevant grade's value: a record's reference response shown with another
    # record's image, for this share of the records (0: none). Every other grade changes the text; only this one
    # needs the image to be scored low (docs/rl_generalization.md).
    image_negative_rate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.source, Mapping):
            self.source = from_node(GradeSource, self.source, "grade (stage.source)")
        if isinstance(self.grading, Mapping):
            self.grading = from_node(GradeConfig, self.grading, "grade (stage.grading)")
        for key in ("wrong_letter_rate", "image_negative_rate"):
            value = getattr(self, key)
            check(0.0 <= value <= 1.0, f"stage.{key} must be in [0, 1], got {value}")

    @classmethod
    def from_node(cls, node: Mapping[str, Any], stage: str = "grade") -> GradeStageConfig:
        """From a resolved ``stage`` node (``stage``: the stage named in an unknown-key error)."""
        return from_node(cls, node, stage)


__all__ = ["GradeSource", "GradeStageConfig"]
