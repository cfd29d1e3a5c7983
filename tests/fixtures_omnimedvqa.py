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
    closing parenthesis.

    Returns:
        ``{"layout": "raw", "n_records": int, "skipped": {reason: n}, "datasets": {name: n},
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
        "BetaEye/101": exp("D", "DME", 4, "OCT", "Disease Diagnosis"),
        "BetaEye/102": exp("B", "Grade 1", 4, "FP", "Lesion Grading"),
        "BetaEye/103": exp("A", "Thyroid", 4, "US", "Anatomy Identification"),
        "BetaEye/104": exp("C", "Melanoma", 4, "Der", "Disease Diagnosis"),
        "BetaEye/105": exp("B", "H&E", 2, "Micro", "Other Biological Attributes"),
        "BetaEye/106": exp("C", "Normal", 3, "FP", "Disease Diagnosis"),
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
        },
        "datasets": {"AlphaCT": 5, "BetaEye": 6},
        # Fixed by hash_split of the image path; a change here means every user's split changed.
        "splits": {"train": 8, "val": 1, "test": 2},
        "records": records,
        "shared_image_ids": ["AlphaCT/a-1", "AlphaCT/a-11"],
        "malformed_file": "Broken.json",
    }


def write_medr1_fixture(root: Path) -> dict[str, Any]:
    """Write a Med-R1 ``Splits`` tree (both axes) plus its images under ``root``; return the expectations.

    Modality tree: ``CT(Computed Tomography)_train.json`` (3 good items in different option styles, then
    a missing image, a problem without options, an answer letter beyond the options and an item without
    ``solution``), ``CT_test.json`` (1 good item with ``(A)`` markers, 1 unparseable solution),
    ``OCT (Optical Coherence Tomography_test.json`` (1 good), ``Thermal_train.json`` (1 item, unknown
    modality) and ``X-Ray_train.json`` (not JSON). Question-type tree: ``Modality Recognition_train.json``
    (modality read from the answer), ``OBA_train.json`` (abbreviated name; modality from the image
    path), ``Disease Diagnosis_test.json`` (modality from the question text; one falling back).

    Returns:
        ``{"modality": tree, "question_type": tree}``, each tree being ``{"n_records": int,
        "skipped": {reason: n}, "splits": {split: n}, "by_question": {question: {"options", "answer",
        "answer_text", "modality", "question_type", "split", "guessed"}}}``; ``guessed`` is how the
        axis missing from the tree was set ("keywords", "answer" or "fallback").
    """
    root = Path(root)
    imgs = {
        "c1": "Images/ChestCT/c1.png",
        "c2": "Images/ChestCT/c2.png",
        "c3": "Images/ChestCT/c3.png",
        "o1": "Images/RetinaOCT/o1.png",
        "t1": "Images/Thermo/t1.png",
        "b1": "Images/BrainSet/b1.png",
        "e1": "Images/EyeSet/e1.png",
        "m1": "Images/Misc/m1.png",
        "h1": "Images/HistoMicroscopy/h1.png",
    }
    for k, (_, rel) in enumerate(sorted(imgs.items())):
        _png(root / rel, 200 + k)

    def write(axis: str, split: str, name: str, items: Any, raw: str | None = None) -> None:
        path = root / "Splits" / axis / split / f"{name}_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(raw if raw is not None else json.dumps(items, indent=1), encoding="utf-8")

    def item(image: str, problem: str, solution: str | None) -> dict[str, str]:
        out = {"image": image, "problem": problem}
        if solution is not None:
            out["solution"] = solution
        return out

    write(
        "modality",
        "train",
        "CT(Computed Tomography)",
        [
            item(
                imgs["c1"],
                "What imaging modality is shown? A)CT, B)X-ray, C)MRI, D)US",
                "<answer> A </answer>",
            ),
            item(
                imgs["c2"],
                "Which organ is shown in this image?\nA) liver\nB) kidney\nC) lung",
                "<answer>C</answer>",
            ),
            item(imgs["c3"], "What is the color of the marked area? A)red,B)blue", "<answer> B </answer>"),
            item("Images/ChestCT/missing.png", "Is the image sharp? A)yes, B)no", "<answer> A </answer>"),
            item(imgs["c1"], "Describe the image.", "<answer> A </answer>"),
            item(imgs["c2"], "Is it contrast enhanced? A)yes, B)no", "<answer> D </answer>"),
            item(imgs["c3"], "Where is the nodule? A)left, B)right", None),
        ],
    )
    write(
        "modality",
        "test",
        "CT",
        [
            item(imgs["c2"], "Is there a tumor? (A) yes (B) no", "<answer>A</answer>"),
            item(imgs["c3"], "Is there a cyst? A)yes, B)no", "I do not know"),
        ],
    )
    write(
        "modality",
        "test",
        "OCT (Optical Coherence Tomography",
        [
            item(imgs["o1"], "What stage is the lesion? A)early, B)late", "<answer> B </answer>"),
        ],
    )
    write(
        "modality", "train", "Thermal", [item(imgs["t1"], "Is it warm? A)yes, B)no", "<answer> A </answer>")]
    )
    write("modality", "train", "X-Ray", None, raw='[{"image": "Images/x.png", ')

    write(
        "question_type",
        "train",
        "Modality Recognition",
        [
            item(
                imgs["b1"],
                "What modality is this? A)CT, B)MR (Mag-netic Resonance Imaging)",
                "<answer> B </answer>",
            ),
        ],
    )
    write(
        "question_type",
        "train",
        "OBA",
        [
            item(imgs["h1"], "What is the cell count? A)1,B)2,C)3", "<answer> C </answer>"),
        ],
    )
    write(
        "question_type",
        "test",
        "Disease Diagnosis",
        [
            item(imgs["e1"], "Is this fundus image normal? A)yes, B)no", "<answer> A </answer>"),
            item(imgs["m1"], "Is there an abnormality? A)yes, B)no", "<answer> B </answer>"),
        ],
    )

    def exp(
        options: list[str], answer: str, modality: str, qtype: str, split: str, guessed: str
    ) -> dict[str, Any]:
        text = options["ABCD".index(answer)]
        return {
            "options": options,
            "answer": answer,
            "answer_text": text,
            "modality": modality,
            "question_type": qtype,
            "split": split,
            "guessed": guessed,
        }

    modality_tree = {
        "What imaging modality is shown?": exp(
            ["CT", "X-ray", "MRI", "US"], "A", "CT", "Modality Recognition", "train", "keywords"
        ),
        "Which organ is shown in this image?": exp(
            ["liver", "kidney", "lung"], "C", "CT", "Anatomy Identification", "train", "keywords"
        ),
        "What is the color of the marked area?": exp(
            ["red", "blue"], "B", "CT", "Other Biological Attributes", "train", "fallback"
        ),
        "Is there a tumor?": exp(["yes", "no"], "A", "CT", "Disease Diagnosis", "test", "keywords"),
        "What stage is the lesion?": exp(["early", "late"], "B", "OCT", "Lesion Grading", "test", "keywords"),
    }
    qtype_tree = {
        "What modality is this?": exp(
            ["CT", "MR (Mag-netic Resonance Imaging)"], "B", "MRI", "Modality Recognition", "train", "answer"
        ),
        "What is the cell count?": exp(
            ["1", "2", "3"], "C", "Micro", "Other Biological Attributes", "train", "keywords"
        ),
        "Is this fundus image normal?": exp(
            ["yes", "no"], "A", "FP", "Disease Diagnosis", "test", "keywords"
        ),
        "Is there an abnormality?": exp(["yes", "no"], "B", "MRI", "Disease Diagnosis", "test", "fallback"),
    }
    return {
        "modality": {
            "n_records": len(modality_tree),
            "skipped": {
                "missing_image": 1,
                "unparseable_options": 1,
                "answer_not_in_options": 1,
                "missing_field": 1,
                "unparseable_answer": 1,
                "unknown_modality": 1,
                "malformed_json": 1,
            },
            "splits": {"train": 3, "test": 2},
            "by_question": modality_tree,
        },
        "question_type": {
            "n_records": len(qtype_tree),
            "skipped": {},
            "splits": {"train": 2, "test": 2},
            "by_question": qtype_tree,
        },
    }
