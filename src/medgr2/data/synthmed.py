"""SynthMed: a procedural stand-in for OmniMedVQA that runs offline on a CPU.

It has OmniMedVQA's shape — the same eight modalities and five question types, multiple choice with 2–4
shuffled options, the answer given as a letter — but every answer can only be read from the image:
modality from the background's look, lesion presence, size (the grade), colour and position from a
rendered blob. Everything is deterministic from ``(seed, split, index)``; splits draw from disjoint random
streams. Answers and letter positions are balanced by construction, so "always A" or "always no" scores
exactly chance. A per-sample ``difficulty`` in [0, 1] lowers lesion contrast and raises noise.

It is a stand-in: numbers on SynthMed say that the machinery learns, not how a real VLM does on real
images. The README says so too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medgr2.data.schema import LETTERS, MODALITIES, QUESTION_TYPES, make_record

SPLIT_CODES = {"pretrain": 11, "train": 23, "val": 37, "test": 53}

SIZES = ("small", "medium", "large")
# The size word comes first and as its own token, as in the findings ("lesion: medium red, ..."): comparing the
# findings with an option is then a match of one token (measured: with "grade 2 (medium)" the tokenizer splits
# off "medium" without its space, a different token, and Lesion Grading stayed at chance while size was read).
GRADES = {"small": "small (grade 1)", "medium": "medium (grade 2)", "large": "large (grade 3)"}
COLOURS = {"red": (230, 40, 40), "green": (40, 210, 60), "blue": (50, 80, 240), "yellow": (240, 220, 40)}
# Anatomical landmarks: a line along the left edge and one along the top edge. Real images show where a lesion
# is through the anatomy around it; Qwen2.5-VL's vision tower has no absolute position embedding (rotary only),
# so without them an image token's content says nothing about where it is, and a 2-layer model read the
# quadrant at chance (measured: 0.23-0.28 with 4 quadrants) while reading size and colour at 0.8-0.9.
LANDMARK = (0, 230, 230)
LANDMARK_WIDTH = 2
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
FINDINGS = ("no abnormality", "lesion present")

# What a modality looks like: base colour (RGB) and a pattern the renderer draws on top.
_MODALITY_LOOK: dict[str, tuple[tuple[int, int, int], str]] = {
    "CT": ((120, 120, 120), "disc"),
    "MRI": ((90, 90, 110), "ring"),
    "X-Ray": ((200, 200, 200), "ribs"),
    "US": ((60, 60, 60), "fan"),
    "Der": ((225, 180, 150), "flat"),
    "FP": ((200, 90, 30), "disc"),
    "OCT": ((100, 100, 100), "layers"),
    "Micro": ((220, 160, 210), "dots"),
}
MODALITY_WORDS = {
    "CT": "CT",
    "MRI": "MRI",
    "X-Ray": "X-ray",
    "US": "ultrasound",
    "Der": "dermoscopy",
    "FP": "fundus photo",
    "OCT": "OCT",
    "Micro": "microscopy",
}


@dataclass(frozen=True)
class SynthMedConfig:
    """Sizes and knobs of the benchmark (``conf/data/synthmed.yaml`` mirrors these)."""

    seed: int = 0
    image_size: int = 56
    n_pretrain: int = 24000
    n_train: int = 12000
    n_val: int = 500
    n_test: int = 1000
    radius: tuple[float, float, float] = (3.0, 5.5, 8.5)  # small / medium / large, pixels at 56 px
    max_difficulty: float = 1.0
    rationale: str = "verify"  # see medgr2.data.prompting.RATIONALE_STYLES
    landmarks: bool = True  # left and top edge lines that make the lesion's position readable (see LANDMARK)

    def fingerprint(self) -> str:
        """Stable short hash of the config (the cache key of built datasets)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def size_of(self, split: str) -> int:
        return {"pretrain": self.n_pretrain, "train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


# --------------------------------------------------------------------------------------------- truth


def sample_truth(cfg: SynthMedConfig, split: str, index: int) -> dict[str, Any]:
    """The hidden ground truth of one image and the question asked about it (balanced by construction).

    Question type cycles with the index; within a type the answer class and the answer's letter position
    cycle too, so that every class and every letter is equally frequent over a full cycle.
    """
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], index])
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    j = index // len(QUESTION_TYPES)  # position within this question type's cycle
    modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
    lesion = True
    size = SIZES[int(rng.integers(3))]
    colour = list(COLOURS)[int(rng.integers(4))]
    quadrant = QUADRANTS[int(rng.integers(4))]
    anatomy_axis = ("side", "level", "quadrant")[int(rng.integers(3))]
    if qtype == "Modality Recognition":
        modality = MODALITIES[j % len(MODALITIES)]
        lesion = bool(rng.integers(2))
        n_classes, n_opts = len(MODALITIES), 4
    elif qtype == "Disease Diagnosis":
        lesion = bool(j % 2)
        n_classes, n_opts = 2, 2
    elif qtype == "Lesion Grading":
        size = SIZES[j % 3]
        n_classes, n_opts = 3, 3
    elif qtype == "Other Biological Attributes":
        colour = list(COLOURS)[j % 4]
        n_classes, n_opts = 4, 4
    else:  # Anatomy Identification: left/right, upper/lower or the quadrant, cycling so each is balanced
        anatomy_axis = ("side", "level", "quadrant")[j % 3]
        j //= 3
        if anatomy_axis == "quadrant":
            quadrant = QUADRANTS[j % 4]
            n_classes, n_opts = 4, 4
        else:
            n_classes, n_opts = 2, 2
            other = int(rng.integers(2))  # the free coordinate
            row, col = (other, j % 2) if anatomy_axis == "side" else (j % 2, other)
            quadrant = QUADRANTS[2 * row + col]
    answer_pos = (j // n_classes) % n_opts
    difficulty = float(rng.uniform(0.0, cfg.max_difficulty))
    return {
        "index": index,
        "split": split,
        "question_type": qtype,
        "modality": modality,
        "lesion": lesion,
        "size": size,
        "colour": colour,
        "quadrant": quadrant,
        "anatomy_axis": anatomy_axis,
        "answer_pos": answer_pos,
        "difficulty": difficulty,
        "image_seed": int(rng.integers(2**31 - 1)),
    }


# -------------------------------------------------------------------------------------------- render


def render(truth: dict[str, Any], cfg: SynthMedConfig) -> Image.Image:
    """Draw the image for a ground truth (deterministic from ``truth['image_seed']``)."""
    s = cfg.image_size
    rng = np.random.default_rng(truth["image_seed"])
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    c = (s - 1) / 2
    base, pattern = _MODALITY_LOOK[truth["modality"]]
    img = np.zeros((s, s, 3), np.float32)
    r = np.hypot(xx - c, yy - c)
    if pattern == "disc":
        mask = (r < 0.47 * s)[..., None]
        img = np.where(mask, np.array(base, np.float32), 0.0)
    elif pattern == "ring":
        img[:] = np.array(base, np.float32) * 0.5
        ring = (np.abs(r - 0.42 * s) < 2.5)[..., None]
        img = np.where(ring, 235.0, img)
    elif pattern == "ribs":
        img[:] = np.array(base, np.float32)
        ribs = ((yy.astype(int) // 5) % 2 == 0)[..., None]
        img = np.where(ribs, img * 0.55, img)
    elif pattern == "fan":
        ang = np.arctan2(xx - c, yy + 0.1 * s)
        mask = ((np.abs(ang) < 0.6) & (yy > 2))[..., None]
        speckle = rng.uniform(0.5, 1.5, (s, s, 1)).astype(np.float32)
        img = np.where(mask, np.array(base, np.float32) * 2.2 * speckle, 0.0)
    elif pattern == "layers":
        bands = (0.6 + 0.4 * np.sin(yy / 2.2))[..., None]
        img = np.array(base, np.float32) * bands * 1.6
    elif pattern == "dots":
        img[:] = np.array(base, np.float32)
        for _ in range(14):
            x0, y0 = rng.uniform(0, s, 2)
            dot = (np.hypot(xx - x0, yy - y0) < 1.6)[..., None]
            img = np.where(dot, np.array((120, 40, 140), np.float32), img)
    else:  # flat
        img[:] = np.array(base, np.float32)

    edge = 0
    if cfg.landmarks:
        edge = max(1, round(LANDMARK_WIDTH * s / 56.0))
        img[:, :edge] = LANDMARK  # left
        img[:edge, :] = LANDMARK  # top

    if truth["lesion"]:
        radius = cfg.radius[SIZES.index(truth["size"])] * s / 56.0
        q = QUADRANTS.index(truth["quadrant"])
        # Centre inside its quadrant with jitter, never across the midline (side/level stay unambiguous) and
        # never over a landmark.
        margin = radius + 1.0 + edge
        lo, hi = margin, s / 2 - 1.5
        cx = rng.uniform(lo, max(lo, hi - 0.0)) if q % 2 == 0 else s - rng.uniform(lo, max(lo, hi))
        cy = rng.uniform(lo, max(lo, hi)) if q < 2 else s - rng.uniform(lo, max(lo, hi))
        blob = np.hypot(xx - cx, yy - cy) < radius
        contrast = 1.0 - 0.55 * truth["difficulty"]
        col = np.array(COLOURS[truth["colour"]], np.float32)
        img[blob] = contrast * col + (1.0 - contrast) * img[blob]

    noise = rng.normal(0.0, 6.0 + 30.0 * truth["difficulty"], img.shape).astype(np.float32)
    out = np.clip(img + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


# ------------------------------------------------------------------------------------------ language


def describe(truth: dict[str, Any]) -> str:
    """A short, fixed-format description of everything visible (the rationale and the pretraining target).

    >>> describe({"modality": "CT", "lesion": True, "size": "large", "colour": "red", "quadrant": "upper left"})
    'CT image. lesion: large red, upper left.'
    """
    head = f"{MODALITY_WORDS[truth['modality']]} image."
    if not truth["lesion"]:
        return f"{head} no lesion."
    return f"{head} lesion: {truth['size']} {truth['colour']}, {truth['quadrant']}."


def _question_and_classes(truth: dict[str, Any]) -> tuple[str, list[str], str]:
    """(question, candidate answer texts, correct answer text) for the truth's question type."""
    qtype = truth["question_type"]
    if qtype == "Modality Recognition":
        return "What imaging modality is shown?", [MODALITY_WORDS[m] for m in MODALITIES], MODALITY_WORDS[truth["modality"]]
    if qtype == "Disease Diagnosis":
        return "What is the finding in this image?", list(FINDINGS), FINDINGS[int(truth["lesion"])]
    if qtype == "Lesion Grading":
        return "What is the grade of the lesion?", list(GRADES.values()), GRADES[truth["size"]]
    if qtype == "Other Biological Attributes":
        return "What colour is the lesion?", list(COLOURS), truth["colour"]
    quadrant = truth["quadrant"]
    if truth["anatomy_axis"] == "side":
        return "On which side is the lesion?", ["left", "right"], quadrant.split()[1]
    if truth["anatomy_axis"] == "level":
        return "Is the lesion in the upper or lower half?", ["upper", "lower"], quadrant.split()[0]
    return "In which quadrant is the lesion?", list(QUADRANTS), quadrant


def make_qa(truth: dict[str, Any], rng: np.random.Generator | None = None, style: str = "verify") -> dict[str, Any]:
    """Question, shuffled options, answer letter, answer text and rationale for a ground truth.

    The correct option lands at ``truth['answer_pos']``; distractors and their order come from ``rng``
    (seeded from the truth when not given). ``style``: how the rationale concludes
    (:data:`medgr2.data.prompting.RATIONALE_STYLES`).
    """
    from medgr2.data.prompting import rationale_text

    rng = rng or np.random.default_rng(truth["image_seed"] + 1)
    question, classes, answer_text = _question_and_classes(truth)
    n_opts = {2: 2, 3: 3}.get(len(classes), 4)
    distractors = [c for c in classes if c != answer_text]
    picked = [distractors[i] for i in rng.permutation(len(distractors))[: n_opts - 1]]
    options = picked[: truth["answer_pos"]] + [answer_text] + picked[truth["answer_pos"] :]
    letter = LETTERS[truth["answer_pos"]]
    rationale = rationale_text(describe(truth), options, truth["answer_pos"], style)
    return {"question": question, "options": options, "answer": letter, "answer_text": answer_text,
            "rationale": rationale}


def make_item(cfg: SynthMedConfig, split: str, index: int) -> dict[str, Any]:
    """One complete schema record (image included) of the benchmark."""
    truth = sample_truth(cfg, split, index)
    qa = make_qa(truth, style=cfg.rationale)
    return make_record(
        id=f"synthmed-{split}-{index:06d}",
        image=render(truth, cfg),
        modality=truth["modality"],
        question_type=truth["question_type"],
        dataset="SynthMed",
        split=split,
        provenance={"source": "synthmed", "seed": cfg.seed, "truth": truth},
        **qa,
    )


def tokenizer_corpus(cfg: SynthMedConfig | None = None, n: int = 4000) -> list[str]:
    """Text the tiny tokenizer is trained on: SynthMed questions, options, rationales and prompts."""
    from medgr2.data.prompting import INSTRUCTIONS, user_text
    from medgr2.data.response_format import response_text

    cfg = cfg or SynthMedConfig()
    texts: list[str] = list(INSTRUCTIONS.values())
    for i in range(n):
        truth = sample_truth(cfg, "pretrain", i)
        qa = make_qa(truth, style=cfg.rationale)
        texts.append(user_text(qa, ""))
        texts.append(response_text(qa["rationale"], qa["answer"]))
        texts.append(f"<desc>{describe(truth)}</desc>")
    return texts


def build_split(cfg: SynthMedConfig, split: str, n: int | None = None, start: int = 0):
    """The split as a ``datasets.Dataset`` in the canonical schema (rendered in memory)."""
    from medgr2.data.schema import to_dataset

    n = cfg.size_of(split) if n is None else n
    return to_dataset(make_item(cfg, split, i) for i in range(start, start + n))


def load_synthmed(cfg: SynthMedConfig, split: str, cache_dir: str | Path, n: int | None = None):
    """A split, built once and cached on disk under ``cache_dir`` (keyed by the config fingerprint)."""
    import datasets

    from medgr2.utils.io import atomic_dir

    n = cfg.size_of(split) if n is None else n
    path = Path(cache_dir) / f"synthmed-{cfg.fingerprint()}" / f"{split}-{n}"
    if not (path / "dataset_info.json").exists():
        with atomic_dir(path) as tmp:
            build_split(cfg, split, n).save_to_disk(str(tmp))
    return datasets.load_from_disk(str(path))
