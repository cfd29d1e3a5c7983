"""Writers of small OmniMedVQA trees (raw and Med-R1 layouts) for tests, with the expected load results.

Usage from any test (``tests/`` is on ``sys.path`` under pytest's default import mode)::

    from fixtures_omnimedvqa import write_omnimedvqa_fixture
    expected = write_omnimedvqa_fixture(tmp_path / "omni")
    result = load_omnimedvqa(tmp_path / "omni")
    assert len(result.records) == expected["n_records"]
    assert dict(result.skipped) == expected["skipped"]

Images are tiny PNGs drawn with PIL; the JSON follows the real files' format exactly, deliberately
including the kinds of bad items found in (or plausible for) the real data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["write_medr1_fixture", "write_omnimedvqa_fixture"]


def _png(path: Path, seed: int) -> str:
    """Write an 8x8 PNG whose colour depends on ``seed``; return its path relative to the tree root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    Image.new("RGB", (8, 8), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(path, "PNG")
    return path.as_posix()


def _raw_item(
    dataset: str,
    qid: Any,
    modality: str,
    qtype: str,
    question: str,
    options: list[str],
    gt: str,
    image: str,
    *,
    modality_key: str = "modality_type",
    absent_options: bool = True,
) -> dict[str, Any]:
    """One raw QA object; unused options are left out (``absent_options``) or written as ``""``."""
    item: dict[str, Any] = {
        "dataset": dataset,
        "question_id": qid,
        "question_type": qtype,
        "question": question,
        "gt_answer": gt,
        "image_path": image,
    }
    for k, letter in enumerate("ABCD"):
        if k < len(options):
            item[f"option_{letter}"] = options[k]
        elif not absent_options:
            item[f"option_{letter}"] = ""
    item[modality_key] = modality
    return item


def write_omnimedvqa_fixture(root: Path) -> dict[str, Any]:
    """Write a raw-layout OmniMedVQA tree under ``root`` and return what loading it must give.

    ``root/QA_information/Open-access/`` holds ``AlphaCT.json`` (key ``modality_type``, string ids),
    ``BetaEye.json`` (key ``modality``, integer ids) and ``Broken.json`` (not JSON); images are under
    ``root/Images/<Dataset>/``. Bad items: a missing image, a zero-byte image, a corrupt image (random
    bytes), a ``gt_answer`` not among the options, a duplicate id, a missing ``gt_answer`` key, an
    unknown modality, an unknown question type and a non-object item. Good items include 2-option
    items (C/D absent, or empty strings), a 3-option item, an image shared by two questions,
    ``gt_answer`` differing from its option in case and spaces, and the OCT modality string without its
    closing parenthesis. Real-data cases: options repeated up to case or exactly (kept: the answer is not a
    repeat), the answer one of the repeats (skipped), an answer matching two options ignoring case and none
    exactly (skipped, ambiguous), and a byte copy of a train image under a test path (leakage by content).

    Returns:
        ``{"layout": "raw", "n_records": int, "skipped": {reason: n}, "warnings": {reason: n},
        "repeated_option_ids": [id, ...], "leakage": {...}, "datasets": {name: n},
        "splits": {split: n}, "records": {id: {"answer", "answer_text", "n_options", "modality", "question_type"}},
        "shared_image_ids": [id, id], "malformed_file": "Broken.json"}``
    """
    root = Path(root)
    qa = root / "QA_information" / "Open-access"
    qa.mkdir(parents=True, exist_ok=True)
    a_dir, b_dir = root / "Images" / "AlphaCT", root / "Images" / "BetaEye"
    for k in range(1, 5):
        _png(a_dir / f"a{k}.png", k)
    # Image numbers chosen so that hash_split (by image path) puts BetaEye items in all three splits.
    for k in (1, 2, 3, 7, 10, 12):
        _png(b_dir / f"b{k}.png", 100 + k)
    (b_dir / "a3_copy5.png").write_bytes((a_dir / "a3.png").read_bytes())
    (a_dir / "a_empty.png").write_bytes(b"")
    # A NUL first byte guarantees no image format recognises the header.
    (a_dir / "a_corrupt.png").write_bytes(b"\x00" + random.Random(7).randbytes(255))

    ct, mr = "CT(Computed Tomography)", "MR (Mag-netic Resonance Imaging)"
    mods4 = ["CT", "MRI", "X-Ray", "Ultrasound"]
    organs = ["Liver", "Kidney", "Brain", "Heart"]
    alpha = [
        _raw_item(
            "AlphaCT",
            "a-1",
            ct,
            "Modality Recognition",
            "What modality is used?",
            mods4,
            "CT",
            "Images/AlphaCT/a1.png",
        ),
        # gt_answer in another case with spaces: matched after strip/casefold -> C.
        _raw_item(
            "AlphaCT",
            "a-2",
            mr,
            "Anatomy Identification",
            "Which organ is shown?",
            organs,
            "  brain ",
            "Images/AlphaCT/a2.png",
        ),
        # 2 options, C/D keys absent.
        _raw_item(
            "AlphaCT",
            "a-3",
            ct,
            "Disease Diagnosis",
            "Is there a nodule?",
            ["Yes", "No"],
            "No",
            "Images/AlphaCT/a3.png",
        ),
        # 2 options, C/D present as empty strings.
        _raw_item(
            "AlphaCT",
            "a-4",
            "X-Ray",
            "Other Biological Attributes",
            "Is the patient an adult?",
            ["Yes", "No"],
            "Yes",
            "Images/AlphaCT/a4.png",
            absent_options=False,
        ),
        _raw_item(
            "AlphaCT",
            "a-5",
            ct,
            "Disease Diagnosis",
            "Missing image?",
            ["Yes", "No"],
            "Yes",
            "Images/AlphaCT/a_missing.png",
        ),
        _raw_item(
            "AlphaCT",
            "a-6",
            ct,
            "Disease Diagnosis",
            "Empty image?",
            ["Yes", "No"],
            "Yes",
            "Images/AlphaCT/a_empty.png",
        ),
        _raw_item(
            "AlphaCT",
            "a-7",
            ct,
            "Disease Diagnosis",
            "Corrupt image?",
            ["Yes", "No"],
            "Yes",
            "Images/AlphaCT/a_corrupt.png",
        ),
        _raw_item(
            "AlphaCT",
            "a-8",
            mr,
            "Anatomy Identification",
            "Which organ?",
            organs,
            "Spleen",
            "Images/AlphaCT/a2.png",
        ),
        # Same id as the first item: skipped, the first is kept.
        _raw_item(
            "AlphaCT", "a-1", ct, "Modality Recognition", "Duplicate?", mods4, "MRI", "Images/AlphaCT/a1.png"
        ),
        {
            k: v
            for k, v in _raw_item(
                "AlphaCT",
                "a-9",
                ct,
                "Disease Diagnosis",
                "No answer key?",
                ["Yes", "No"],
                "Yes",
                "Images/AlphaCT/a3.png",
            ).items()
            if k != "gt_answer"
        },
        _raw_item(
            "AlphaCT",
            "a-10",
            "Thermography",
            "Disease Diagnosis",
            "Unknown modality?",
            ["Yes", "No"],
            "Yes",
            "Images/AlphaCT/a3.png",
        ),
        "this item is not an object",
        # Shares a1.png with a-1.
        _raw_item(
            "AlphaCT",
            "a-11",
            ct,
            "Lesion Grading",
            "What grade?",
            ["Grade 1", "Grade 2", "Grade 3", "Grade 4"],
            "Grade 3",
            "Images/AlphaCT/a1.png",
        ),
        _raw_item(
            "AlphaCT", "a-12", ct, "Counting", "How many nodules?", ["1", "2"], "2", "Images/AlphaCT/a3.png"
        ),
        # Real items repeat an option up to case, or exactly; kept when the answer is not a repeat.
        _raw_item("AlphaCT", "a-13", ct, "Anatomy Identification", "Which gland or organ is this?",
                  ["Thyroid Gland", "Liver", "Thyroid gland", "Kidney"], "Liver", "Images/AlphaCT/a2.png"),
        _raw_item("AlphaCT", "a-14", "X-Ray", "Modality Recognition", "Which imaging technique?",
                  ["SPECT", "CT", "SPECT", "MRI"], "CT", "Images/AlphaCT/a4.png"),
        # The answer is one of the repeats: two right answers, skipped.
        _raw_item("AlphaCT", "a-15", ct, "Anatomy Identification", "Which gland?",
                  ["Thyroid Gland", "Thyroid gland", "Liver"], "Thyroid Gland", "Images/AlphaCT/a2.png"),
        # The answer matches two options ignoring case and none exactly: its letter cannot be told.
        _raw_item("AlphaCT", "a-16", ct, "Anatomy Identification", "Which gland is shown?",
                  ["Thyroid Gland", "thyroid gland", "Liver"], "THYROID GLAND", "Images/AlphaCT/a2.png"),
    ]
    b = "BetaEye"
    beta = [
        _raw_item(
            b,
            101,
            "OCT (Optical Coherence Tomography",
            "Disease Diagnosis",
            "What does the OCT show?",
            ["Normal", "Drusen", "CNV", "DME"],
            "DME",
            "Images/BetaEye/b1.png",
            modality_key="modality",
        ),
        _raw_item(
            b,
            102,
            "Fundus Photography",
            "Lesion Grading",
            "Grade the retinopathy.",
            ["Grade 0", "Grade 1", "Grade 2", "Grade 3"],
            "Grade 1",
            "Images/BetaEye/b2.png",
            modality_key="modality",
        ),
        _raw_item(
            b,
            103,
            "ultrasound",
            "Anatomy Identification",
            "Which organ is imaged?",
            ["Thyroid", "Breast", "Liver", "Kidney"],
            "Thyroid",
            "Images/BetaEye/b3.png",
            modality_key="modality",
        ),
        _raw_item(
            b,
            104,
            "Dermoscopy",
            "Disease Diagnosis",
            "What is the lesion?",
            ["Nevus", "Keratosis", "Melanoma", "Dermatofibroma"],
            "melanoma",
            "Images/BetaEye/b7.png",
            modality_key="modality",
        ),
        _raw_item(
            b,
            105,
            "Microscopy Images",
            "Other Biological Attributes",
            "What stain is used?",
            ["Giemsa", "H&E"],
            "H&E",
            "Images/BetaEye/b10.png",
            modality_key="modality",
        ),
        _raw_item(
            b,
            106,
            "Fundus Photography",
            "Disease Diagnosis",
            "Which disease?",
            ["Glaucoma", "Cataract", "Normal"],
            "Normal",
            "Images/BetaEye/b12.png",
            modality_key="modality",
        ),
        # A byte copy of AlphaCT/a3.png (train) under a path that hash_split puts in test: leakage by content.
        _raw_item(b, 107, "Dermoscopy", "Disease Diagnosis", "Is the lesion malignant?", ["Yes", "No"], "Yes",
                  "Images/BetaEye/a3_copy5.png", modality_key="modality"),
    ]
    (qa / "AlphaCT.json").write_text(json.dumps(alpha, indent=1), encoding="utf-8")
    (qa / "BetaEye.json").write_text(json.dumps(beta, indent=1), encoding="utf-8")
    (qa / "Broken.json").write_text('[{"dataset": "Broken", "question_id": 1, ', encoding="utf-8")

    def exp(answer: str, text: str, n: int, modality: str, qtype: str) -> dict[str, Any]:
        return {
            "answer": answer,
            "answer_text": text,
            "n_options": n,
            "modality": modality,
            "question_type": qtype,
        }

    records = {
        "AlphaCT/a-1": exp("A", "CT", 4, "CT", "Modality Recognition"),
        "AlphaCT/a-2": exp("C", "Brain", 4, "MRI", "Anatomy Identification"),
        "AlphaCT/a-3": exp("B", "No", 2, "CT", "Disease Diagnosis"),
        "AlphaCT/a-4": exp("A", "Yes", 2, "X-Ray", "Other Biological Attributes"),
        "AlphaCT/a-11": exp("C", "Grade 3", 4, "CT", "Lesion Grading"),
        "AlphaCT/a-13": exp("B", "Liver", 4, "CT", "Anatomy Identification"),
        "AlphaCT/a-14": exp("B", "CT", 4, "X-Ray", "Modality Recognition"),
        "BetaEye/101": exp("D", "DME", 4, "OCT", "Disease Diagnosis"),
        "BetaEye/102": exp("B", "Grade 1", 4, "FP", "Lesion Grading"),
        "BetaEye/103": exp("A", "Thyroid", 4, "US", "Anatomy Identification"),
        "BetaEye/104": exp("C", "Melanoma", 4, "Der", "Disease Diagnosis"),
        "BetaEye/105": exp("B", "H&E", 2, "Micro", "Other Biological Attributes"),
        "BetaEye/106": exp("C", "Normal", 3, "FP", "Disease Diagnosis"),
        "BetaEye/107": exp("A", "Yes", 2, "Der", "Disease Diagnosis"),
    }
    return {
        "layout": "raw",
        "n_records": len(records),
        "skipped": {
            "missing_image": 1,
            "unreadable_image": 2,
            "answer_not_in_options": 1,
            "duplicate_id": 1,
            "missing_field": 1,
            "unknown_modality": 1,
            "unknown_question_type": 1,
            "malformed_record": 1,
            "malformed_json": 1,
            "answer_is_repeated_option": 1,
            "ambiguous_answer": 1,
        },
        "warnings": {"repeated_options": 2},
        "repeated_option_ids": ["AlphaCT/a-13", "AlphaCT/a-14"],
        "datasets": {"AlphaCT": 7, "BetaEye": 7},
        # Fixed by hash_split of the image path; a change here means every user's split changed.
        "splits": {"train": 10, "val": 1, "test": 3},
        # Split by image path, so nothing is shared by path; a3_copy5.png (test) is a3.png (train) by content.
        "leakage": {"train_images": 7, "test_images": 3, "shared_by_path": 0, "shared_by_content": 1,
                    "train_questions": 1, "test_questions": 1},
        "records": records,
        "shared_image_ids": ["AlphaCT/a-1", "AlphaCT/a-11"],
        "malformed_file": "Broken.json",
    }


def write_medr1_fixture(root: Path, qa_root: Path | None = None) -> dict[str, Any]:
    """The Med-R1 layout fixture: see :func:`fixtures_medr1.write_medr1_fixture` (kept importable from here)."""
    from fixtures_medr1 import write_medr1_fixture as write

    return write(root, qa_root)
