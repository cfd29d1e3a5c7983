"""SynthMed is deterministic, balanced, split-disjoint, and its answers agree with its images."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medgr2.data.schema import QUESTION_TYPES, validate_record
from medgr2.data.synthmed import COLOURS, SynthMedConfig, make_item, render, sample_truth

CFG = SynthMedConfig()


def test_same_seed_same_item_different_seed_different_item():
    a, b = make_item(CFG, "train", 7), make_item(CFG, "train", 7)
    assert a["question"] == b["question"] and a["options"] == b["options"] and a["answer"] == b["answer"]
    assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    c = make_item(SynthMedConfig(seed=1), "train", 7)
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))


def test_every_item_is_a_valid_record():
    for i in range(50):
        validate_record(make_item(CFG, "val", i))


def test_splits_draw_different_images():
    imgs = {s: np.asarray(make_item(CFG, s, 3)["image"]) for s in ("pretrain", "train", "val", "test")}
    keys = list(imgs)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert not np.array_equal(imgs[keys[i]], imgs[keys[j]])


def test_answers_and_letters_are_balanced_per_question_type():
    n = 1200
    truths = [sample_truth(CFG, "train", i) for i in range(n)]
    assert Counter(t["question_type"] for t in truths) == {q: n // 5 for q in QUESTION_TYPES}
    diag = Counter(t["lesion"] for t in truths if t["question_type"] == "Disease Diagnosis")
    assert diag[True] == diag[False]
    grade = Counter(t["size"] for t in truths if t["question_type"] == "Lesion Grading")
    assert max(grade.values()) - min(grade.values()) <= 1
    letters = Counter(t["answer_pos"] for t in truths if t["question_type"] == "Other Biological Attributes")
    assert max(letters.values()) - min(letters.values()) <= 1


@pytest.mark.parametrize("index", range(40))
def test_the_rendered_lesion_has_the_answered_colour_and_position(index):
    truth = {**sample_truth(CFG, "test", index), "lesion": True, "difficulty": 0.0}
    img = np.asarray(render(truth, CFG)).astype(float)
    target = np.array(COLOURS[truth["colour"]], float)
    dist = np.linalg.norm(img - target, axis=-1)  # (H, W)
    ys, xs = np.nonzero(dist < 40)
    assert len(xs) >= 10, "lesion pixels of the stated colour are visible"
    cx, cy, half = xs.mean(), ys.mean(), CFG.image_size / 2
    assert ("left" in truth["quadrant"]) == (cx < half)
    assert ("upper" in truth["quadrant"]) == (cy < half)
    big, small = (CFG.radius[2], CFG.radius[0])
    area = len(xs)
    if truth["size"] == "large":
        assert area > np.pi * (big - 2) ** 2
    if truth["size"] == "small":
        assert area < np.pi * (small + 2) ** 2


def test_no_lesion_images_have_no_lesion_colour_blob():
    for i in range(0, 200, 5):
        truth = sample_truth(CFG, "test", i)
        if truth["lesion"] or truth["modality"] in ("FP", "Der", "Micro"):
            continue  # these backgrounds are themselves reddish / yellowish
        img = np.asarray(render({**truth, "difficulty": 0.0}, CFG)).astype(float)
        for rgb in COLOURS.values():
            assert (np.linalg.norm(img - np.array(rgb, float), axis=-1) < 25).sum() < 10


def test_verify_rationales_check_options_in_order_up_to_the_answer():
    from medgr2.data.schema import LETTERS, index_of

    for i in range(40):
        rec = make_item(CFG, "train", i)
        answer, checks = rec["rationale"].split(" Answer: ")[1].split(" Check: ")
        k = index_of(rec["answer"])
        assert answer == f"{rec['answer_text']}."
        expected = [f"{LETTERS[j]}) {rec['options'][j]}? {'yes' if j == k else 'no'}." for j in range(k + 1)]
        assert checks == " ".join(expected)


def test_answer_style_rationales_state_the_answer_text():
    rec = make_item(SynthMedConfig(rationale="answer"), "train", 4)
    assert rec["rationale"].endswith(f"The answer is {rec['answer_text']}.") and "Check:" not in rec["rationale"]


def test_landmarks_mark_the_left_and_top_edges_and_no_lesion_covers_them():
    from medgr2.data.synthmed import LANDMARK

    for i in range(30):
        truth = {**sample_truth(CFG, "test", i), "lesion": True, "size": "large", "difficulty": 0.0}
        img = np.asarray(render(truth, CFG)).astype(float)
        near = np.linalg.norm(img - np.array(LANDMARK, float), axis=-1) < 40  # (H, W)
        assert near[:, :2].mean() > 0.9 and near[:2, :].mean() > 0.9  # left and top edge lines
        assert near[2:, 2:].mean() < 0.02  # nowhere else, and the lesion never sits on them
    plain = np.asarray(render(sample_truth(CFG, "test", 0), SynthMedConfig(landmarks=False))).astype(float)
    assert (np.linalg.norm(plain - np.array(LANDMARK, float), axis=-1) < 40)[:, :2].mean() < 0.1
