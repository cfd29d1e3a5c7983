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


# One Med-R1 question: where it is and what it really is. ``trees`` says which trees hold it ("m": the
# modality tree, under file ``mfile``; "q": the question-type tree, under file ``qfile``; default both) and
# ``qa`` whether the raw QA_information written beside it holds it.
_MEDR1_QUESTIONS: list[dict[str, Any]] = [
    # In both trees, like every real item: the other tree gives the missing attribute.
    dict(image="c1", problem="What imaging modality is shown? A)CT, B)X-ray, C)MRI, D)US", answer="A",
         mfile="CT(Computed Tomography)", qfile="Modality Recognition", split="train"),
    dict(image="c2", problem="Which organ is shown in this image?\nA) liver\nB) kidney\nC) lung", answer="C",
         mfile="CT(Computed Tomography)", qfile="Anatomy Identification", split="train"),
    dict(image="c3", problem="What is the color of the marked area? A)red,B)blue", answer="B",
         mfile="CT(Computed Tomography)", qfile="OBA", split="train"),
    # c1 again, at test time (Med-R1 splits by question): leakage by path.
    dict(image="c1", problem="Is there a tumor? (A) yes (B) no", answer="A", mfile="CT", qfile="Disease Diagnosis",
         split="test"),
    # A byte copy of c2 (train) under another name: leakage by content only.
    dict(image="c2_copy", problem="Is there a cyst? A)yes, B)no", answer="B", mfile="CT", qfile="Disease Diagnosis",
         split="test"),
    dict(image="o1", problem="What stage is the lesion? A)early, B)late", answer="B",
         mfile="OCT (Optical Coherence Tomography", qfile="Lesion Grading", split="test"),
    dict(image="b1", problem="What modality is this? A)CT, B)MR (Mag-netic Resonance Imaging)", answer="B",
         mfile="MR (Mag-netic Resonance Imaging)", qfile="Modality Recognition", split="train"),
    dict(image="h1", problem="What is the cell count? A)1,B)2,C)3", answer="C", mfile="Microscopy Images",
         qfile="OBA", split="train"),
    dict(image="e1", problem="Is this fundus image normal? A)yes, B)no", answer="A", mfile="Fundus Photography",
         qfile="Disease Diagnosis", split="test"),
    # Repeated options (up to case; exactly), the answer not among them: kept, counted under a warning.
    dict(image="x1", problem="Which organ? A)Thyroid Gland, B)Lung, C)Thyroid gland", answer="B", mfile="X-Ray",
         qfile="Anatomy Identification", split="train", repeated=True),
    dict(image="x1", problem="Which modality? A)SPECT, B)X-ray, C)SPECT, D)CT", answer="B", mfile="X-Ray",
         qfile="Modality Recognition", split="test", repeated=True),
    # The answer is one of the repeats: skipped in either tree.
    dict(image="x1", problem="Which gland? A)Thyroid Gland, B)Thyroid gland, C)Lung", answer="A", mfile="X-Ray",
         qfile="Anatomy Identification", split="train", skip="answer_is_repeated_option"),
    # In one tree only: the missing attribute comes from QA_information when given, else stays unknown.
    dict(image="m1", problem="Is there an abnormality? A)yes, B)no", answer="B", mfile="ultrasound",
         qfile="Disease Diagnosis", split="train", trees="m", qa=True),
    dict(image="e1", problem="Is the optic disc visible? A)yes, B)no", answer="A", mfile="Fundus Photography",
         qfile="Anatomy Identification", split="test", trees="m"),
    dict(image="h1", problem="Which stain is used? A)H&E, B)Giemsa", answer="A", mfile="Microscopy Images",
         qfile="Other Biological Attributes", split="train", trees="q", qa=True),
    # Med-R1's unknown_train.json (its raw record lacked modality_type): modality only from QA_information.
    dict(image="b1", problem="Which plane is shown? A)axial, B)sagittal", answer="A", mfile="unknown",
         qfile="OBA", split="train", qa=True, true_modality="MRI"),
]
_MEDR1_IMAGES = {
    "c1": "Images/ChestCT/c1.png", "c2": "Images/ChestCT/c2.png", "c3": "Images/ChestCT/c3.png",
    "c2_copy": "Images/ChestCT/c2_copy.png", "o1": "Images/RetinaOCT/o1.png", "t1": "Images/Thermo/t1.png",
    "b1": "Images/BrainSet/b1.png", "e1": "Images/EyeSet/e1.png", "m1": "Images/Misc/m1.png",
    "h1": "Images/HistoMicroscopy/h1.png", "x1": "Images/XraySet/x1.png",
}
_TRUE_MODALITY = {"CT(Computed Tomography)": "CT", "CT": "CT", "OCT (Optical Coherence Tomography": "OCT",
                  "MR (Mag-netic Resonance Imaging)": "MRI", "Microscopy Images": "Micro", "Fundus Photography": "FP",
                  "X-Ray": "X-Ray", "ultrasound": "US"}
_QA_MODALITY = {"MRI": "MR (Mag-netic Resonance Imaging)", "US": "ultrasound", "Micro": "Microscopy Images"}
_TRUE_QTYPE = {"OBA": "Other Biological Attributes"}


def write_medr1_fixture(root: Path, qa_root: Path | None = None) -> dict[str, Any]:
    """Write a Med-R1 ``Splits`` tree (both axes, holding the same questions like the real ones) plus images
    under ``root``, and optionally OmniMedVQA's raw ``QA_information`` for the questions marked ``qa`` under
    ``qa_root``; return what loading each axis must give.

    Cases: questions in both trees (attribute joined), in one tree only (from QA_information or unknown), in
    Med-R1's ``unknown_train.json``; repeated options kept, a repeated answer skipped; one image asked about in
    train and test (path leakage) and a byte copy of a train image in test (content leakage). Bad items, in the
    modality tree only: a missing image, a problem without options, an answer letter beyond the options, an
    item without ``solution``, an unparseable solution, ``Thermal_train.json`` (unknown modality) and
    ``Dermoscopy_train.json`` (not JSON).

    Returns:
        ``{axis: {"n_records", "skipped", "warnings", "splits", "leakage", "image_disjoint_removed",
        "by_question": {question: {"options", "answer", "answer_text", "modality", "question_type", "split",
        "sources"}}, "with_qa": {"by_question", "warnings"}}}`` for ``axis`` in modality / question_type;
        ``sources`` maps each attribute to where it came from (``file name``, ``Splits/<axis>``,
        ``QA_information``, ``unknown``).
    """
    from medgr2.data.omnimedvqa_medr1 import parse_problem  # the question text, as the loader stores it

    root = Path(root)
    for k, (name, rel) in enumerate(sorted(_MEDR1_IMAGES.items())):
        if name != "c2_copy":
            _png(root / rel, 200 + k)
    (root / _MEDR1_IMAGES["c2_copy"]).write_bytes((root / _MEDR1_IMAGES["c2"]).read_bytes())

    files: dict[tuple[str, str, str], list[Any]] = {}

    def add(axis: str, split: str, name: str, entry: Any) -> None:
        files.setdefault((axis, split, name), []).append(entry)

    for q in _MEDR1_QUESTIONS:
        entry = {"image": _MEDR1_IMAGES[q["image"]], "problem": q["problem"], "solution": f"<answer> {q['answer']} </answer>"}
        trees = q.get("trees", "mq")
        if "m" in trees:
            add("modality", q["split"], q["mfile"], entry)
        if "q" in trees:
            add("question_type", q["split"], q["qfile"], entry)
    bad = [
        {"image": "Images/ChestCT/missing.png", "problem": "Is the image sharp? A)yes, B)no", "solution": "<answer> A </answer>"},
        {"image": _MEDR1_IMAGES["c1"], "problem": "Describe the image.", "solution": "<answer> A </answer>"},
        {"image": _MEDR1_IMAGES["c2"], "problem": "Is it contrast enhanced? A)yes, B)no", "solution": "<answer> D </answer>"},
        {"image": _MEDR1_IMAGES["c3"], "problem": "Where is the nodule? A)left, B)right"},
        {"image": _MEDR1_IMAGES["c3"], "problem": "Is there a polyp? A)yes, B)no", "solution": "I do not know"},
    ]
    for entry in bad:
        add("modality", "train", "CT(Computed Tomography)", entry)
    add("modality", "train", "Thermal", {"image": _MEDR1_IMAGES["t1"], "problem": "Is it warm? A)yes, B)no",
                                          "solution": "<answer> A </answer>"})
    for (axis, split, name), entries in files.items():
        path = root / "Splits" / axis / split / f"{name}_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    (root / "Splits" / "modality" / "train" / "Dermoscopy_train.json").write_text('[{"image": "Images/x.png", ')

    def truth(q: dict[str, Any]) -> tuple[str, str]:
        return q.get("true_modality") or _TRUE_MODALITY[q["mfile"]], _TRUE_QTYPE.get(q["qfile"], q["qfile"])

    if qa_root is not None:
        qa_items = []
        for n, q in enumerate(x for x in _MEDR1_QUESTIONS if x.get("qa")):
            question, options = parse_problem(q["problem"])
            mod, qt = truth(q)
            qa_items.append(_raw_item("Extra", n, _QA_MODALITY[mod], qt, question, options,
                                      options["ABCD".index(q["answer"])], _MEDR1_IMAGES[q["image"]]))
        qa_dir = Path(qa_root) / "QA_information" / "Open-access"
        qa_dir.mkdir(parents=True, exist_ok=True)
        (qa_dir / "Extra.json").write_text(json.dumps(qa_items, indent=1), encoding="utf-8")

    def expected(axis: str, with_qa: bool) -> dict[str, Any]:
        letter, other = ("m", "q") if axis == "modality" else ("q", "m")
        other_axis = "question_type" if axis == "modality" else "modality"
        out: dict[str, Any] = {}
        for q in _MEDR1_QUESTIONS:
            if letter not in q.get("trees", "mq") or q.get("skip"):
                continue
            question, options = parse_problem(q["problem"])
            values = dict(zip(("modality", "question_type"), truth(q), strict=True))
            sources = {axis: "file name", other_axis: f"Splits/{other_axis}"}
            if q["mfile"] == "unknown":  # the file names no modality; the other tree has none to give
                sources["modality"] = "QA_information" if with_qa and q.get("qa") else "unknown"
            elif other not in q.get("trees", "mq"):
                sources[other_axis] = "QA_information" if with_qa and q.get("qa") else "unknown"
            for field, src in sources.items():
                if src == "unknown":
                    values[field] = "unknown"
            out[question] = {"options": options, "answer": q["answer"],
                             "answer_text": options["ABCD".index(q["answer"])], "split": q["split"],
                             "sources": sources, "repeated": bool(q.get("repeated")), **values}
        return out

    result: dict[str, Any] = {}
    # Counts below are by hand from the cases above (not from the expected() rules).
    result["modality"] = {
        "n_records": 14,
        "skipped": {"missing_image": 1, "unparseable_options": 1, "answer_not_in_options": 1, "missing_field": 1,
                    "unparseable_answer": 1, "unknown_modality": 1, "malformed_json": 1,
                    "answer_is_repeated_option": 1},
        # 1 modality (unknown_train.json) + 2 question types (one-tree questions) stay unknown
        "warnings": {"repeated_options": 2, "attribute_unknown": 3},
        "splits": {"train": 8, "test": 6},
        # train {c1,c2,c3,b1,h1,x1,m1}, test {c1,c2_copy,o1,e1,x1}; c1 and x1 by path, + c2 by content
        "leakage": {"train_images": 7, "test_images": 5, "shared_by_path": 2, "shared_by_content": 3,
                    "train_questions": 3, "test_questions": 3},
        "image_disjoint_removed": 3,
        "by_question": expected("modality", False),
        "with_qa": {"by_question": expected("modality", True),
                    "warnings": {"repeated_options": 2, "attribute_unknown": 1}},
    }
    result["question_type"] = {
        "n_records": 13,
        "skipped": {"answer_is_repeated_option": 1},
        # the modality tree's Thermal (1 item) and Dermoscopy (not JSON) files cannot be indexed for the join
        "warnings": {"repeated_options": 2, "attribute_unknown": 2, "join_tree_unreadable": 2},
        "splits": {"train": 8, "test": 5},
        # train {c1,c2,c3,b1,h1,x1}, test {c1,c2_copy,o1,e1,x1}
        "leakage": {"train_images": 6, "test_images": 5, "shared_by_path": 2, "shared_by_content": 3,
                    "train_questions": 3, "test_questions": 3},
        "image_disjoint_removed": 3,
        "by_question": expected("question_type", False),
        "with_qa": {"by_question": expected("question_type", True),
                    "warnings": {"repeated_options": 2, "join_tree_unreadable": 2}},
    }
    return result
