"""Tiny, deterministic source records for the generation tests (test helpers live under tests/, not in the package).

They have the shape of correct SynthMed/OmniMedVQA records (image, question, 2–4 options, answer letter,
rationale, canonical modality and question type) without depending on the SynthMed generator.
"""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

from medgr2.data.prompting import rationale_text
from medgr2.data.schema import LETTERS, MODALITIES, make_record

_ITEMS: tuple[tuple[str, str, list[str]], ...] = (
    (
        "Modality Recognition",
        "Which imaging modality produced this image?",
        ["CT", "MRI", "X-Ray", "Ultrasound"],
    ),
    (
        "Anatomy Identification",
        "Which organ is shown in the centre of the image?",
        ["Liver", "Lung", "Kidney", "Brain"],
    ),
    ("Disease Diagnosis", "Is a lesion visible in this image?", ["Yes", "No"]),
    ("Lesion Grading", "How large is the visible lesion?", ["Small", "Medium", "Large"]),
    ("Other Biological Attributes", "On which side is the lesion located?", ["Left", "Right"]),
)


def toy_image(index: int, size: int = 16) -> Image.Image:
    """A small RGB image, different for every index (a coloured square at an index-dependent place)."""
    rng = random.Random(index)
    img = Image.new("RGB", (size, size), (rng.randrange(60), rng.randrange(60), rng.randrange(60)))
    draw = ImageDraw.Draw(img)
    x, y = rng.randrange(size // 2), rng.randrange(size // 2)
    draw.rectangle([x, y, x + size // 3, y + size // 3], fill=(rng.randrange(256), rng.randrange(256), 200))
    return img


def toy_sources(n: int, seed: int = 0, size: int = 16) -> list[dict[str, Any]]:
    """``n`` correct source records with small PIL images, deterministic in ``seed``."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        qtype, question, options = _ITEMS[i % len(_ITEMS)]
        options = list(options)
        rng.shuffle(options)
        answer = rng.randrange(len(options))
        records.append(
            make_record(
                id=f"toy-{seed}-{i:05d}",
                image=toy_image(seed * 100_003 + i, size),
                question=question,
                options=options,
                answer=LETTERS[answer],
                rationale=rationale_text(f"The image clearly shows {options[answer].lower()} features at the "
                                         "marked region.", options, answer),
                modality=MODALITIES[i % len(MODALITIES)],
                question_type=qtype,
                dataset="toy",
                split="train",
                provenance={"kind": "toy", "seed": seed},
            )
        )
    return records
