"""Writer of a small Med-R1 ``Splits`` tree (both axes) with its images, and optionally the raw QA_information that
fills what the trees lack, for tests; with the expected load results for every real-data case.

Usage: ``from fixtures_omnimedvqa import write_medr1_fixture`` (or from this module).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fixtures_omnimedvqa import _png, _raw_item

__all__ = ["write_medr1_fixture"]


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
