"""What the grades of D_grade are and how they are configured and seeded (paper §3, "Multi-Grade Supervision").

The grade names and their targets (:class:`GradeConfig`) and the per-row random source (:func:`rng_for`) that
every grade's text is drawn with. :mod:`medgr2.data.grading` builds the data set from these (and owns the extra
columns of a graded row, ``GRADED_FEATURES``). Standard library only: the typed stage configs
(:mod:`medgr2.configs.grade`) import :class:`GradeConfig` when ``medgr2`` is imported.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

GRADES: tuple[str, ...] = ("original", "synonym", "deletion", "irrelevant")
IRRELEVANT_MODES: tuple[str, ...] = ("other_record", "wrong_option")
#: Grade of the pairwise probes / hard negatives: the reference rationale with a wrong answer letter
#: (:mod:`medgr2.data.grade_transforms`); not one of the paper's four grades.
PROBE_GRADE = "wrong_letter"
#: Grade of the image-grounding negatives: a record's reference response shown with another record's image
#: (:func:`medgr2.data.grade_transforms.image_swap_rows`); not one of the paper's four grades.
IMAGE_SWAP_GRADE = "image_swap"



@dataclass
class GradeConfig:
    """How D_grade is built (a Hydra structured config).

    :ivar original/synonym/deletion/irrelevant: the regression target of each grade (paper: 10, 6, 0, -6).
    :ivar synonym_rate: share of the replaceable words (content words with a WordNet synonym) that are
        replaced; at least one is whenever any word is replaceable.
    :ivar synonym_senses: synonyms come from the word's this many most frequent WordNet senses (0: all
        senses); a rare sense ("ribs" -> "ridicule") is a semantic error, not a light paraphrase.
    :ivar deletion_rate: share of the rationale's words deleted.
    :ivar deletion_min_phrases/deletion_max_phrases: the deleted words form this many contiguous spans
        (≥ 2 so the damage is spread and the text is incoherent rather than merely truncated).
    :ivar irrelevant_modes: mode -> sampling weight, modes from :data:`IRRELEVANT_MODES`.
    :ivar seed: global seed; each row's RNG also depends on its record id and grade.
    """

    original: float = 10.0
    synonym: float = 6.0
    deletion: float = 0.0
    irrelevant: float = -6.0
    synonym_rate: float = 0.3
    synonym_senses: int = 2
    deletion_rate: float = 0.4
    deletion_min_phrases: int = 2
    deletion_max_phrases: int = 4
    irrelevant_modes: dict[str, float] = field(
        default_factory=lambda: {"other_record": 0.5, "wrong_option": 0.5}
    )
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("synonym_rate", "deletion_rate"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.synonym_senses < 0:
            raise ValueError(f"synonym_senses must be >= 0 (0: all senses), got {self.synonym_senses}")
        if not 2 <= self.deletion_min_phrases <= self.deletion_max_phrases:
            raise ValueError(
                "need 2 <= deletion_min_phrases <= deletion_max_phrases, got "
                f"{self.deletion_min_phrases}, {self.deletion_max_phrases}"
            )
        unknown = set(self.irrelevant_modes) - set(IRRELEVANT_MODES)
        if unknown:
            raise ValueError(f"unknown irrelevant modes {sorted(unknown)}; known: {IRRELEVANT_MODES}")
        weights = list(self.irrelevant_modes.values())
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"irrelevant_modes weights must be >= 0 with a positive sum: {self.irrelevant_modes}"
            )

    def target(self, grade: str) -> float:
        """The regression target of ``grade``."""
        if grade not in GRADES:
            raise ValueError(f"unknown grade {grade!r}; known: {GRADES}")
        return float(getattr(self, grade))


def rng_for(seed: int, record_id: str, grade: str) -> random.Random:
    """A ``random.Random`` that depends only on ``(seed, record_id, grade)``, stably across processes."""
    digest = hashlib.sha256(json.dumps([seed, record_id, grade]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


__all__ = ["GRADES", "IMAGE_SWAP_GRADE", "IRRELEVANT_MODES", "PROBE_GRADE", "GradeConfig", "rng_for"]
