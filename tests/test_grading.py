"""D_grade: each perturbation does what its grade says, deterministically, on real WordNet 3.0."""

from __future__ import annotations

import json
import random
import re

import pytest
from PIL import Image

from medgr2.data.grading import (
    GRADED_FEATURES,
    DonorPool,
    GradeConfig,
    build_graded,
    delete_phrases,
    irrelevant_response,
    rng_for,
    synonym_perturb,
)
from medgr2.data.response_format import response_text, split_response
from medgr2.data.schema import LETTERS, RecordError, make_record, to_dataset
from medgr2.data.wordnet import WordNetNotFoundError, load_wordnet, synonyms


@pytest.fixture(scope="module")
def wn(tmp_path_factory: pytest.TempPathFactory):
    # Same cache root as tests/test_wordnet.py, so one reader serves the whole session.
    try:
        return load_wordnet(cache_dir=tmp_path_factory.getbasetemp() / "medgr2-cache")
    except WordNetNotFoundError as exc:
        pytest.skip(str(exc))


def image(value: int) -> Image.Image:
    return Image.new("RGB", (4, 4), (value, value, value))


def rec(rid: str, qtype: str, options: list[str], answer: str, rationale: str, img: int = 0, **kw):
    return make_record(
        id=rid,
        image=image(img),
        question=kw.pop("question", f"Question of {rid}?"),
        options=options,
        answer=answer,
        rationale=rationale,
        modality=kw.pop("modality", "CT"),
        question_type=qtype,
        dataset="toy",
        split="train",
        provenance={"source": "test"},
        **kw,
    )


MODALITY = "Modality Recognition"
ANATOMY = "Anatomy Identification"


@pytest.fixture
def records() -> list[dict]:
    return [
        rec(
            "m1",
            MODALITY,
            ["CT", "MRI", "X-Ray", "Ultrasound"],
            "B",
            "The image shows bright cerebrospinal fluid and clear soft tissue contrast, which is typical "
            "of a T2-weighted MRI scan of the brain.",
            img=1,
            modality="MRI",
        ),
        rec(
            "m2",
            MODALITY,
            ["MRI", "CT"],
            "B",
            "Dense bone appears white and the slice shows large attenuation differences, so this is a CT scan.",
            img=2,
        ),
        rec(
            "a1",
            ANATOMY,
            ["Liver", "Kidney", "Lung"],
            "C",
            "The large dark regions bounded by the ribs indicate air, so the organ is the lung.",
            img=3,
        ),
        rec(
            "a2",
            ANATOMY,
            ["Lung", "Liver"],
            "B",
            "A large solid organ lies beneath the right diaphragm, which identifies the liver.",
            img=4,
        ),
        rec("n1", ANATOMY, ["Lung", "Liver"], "A", "", img=5),  # no rationale: skipped
    ]


def nltk_lemmas(wn, word: str) -> set[str]:
    """Lemma names of ``word``'s synsets read straight through NLTK (independent of synonyms())."""
    return {lm.name().replace("_", " ").lower() for s in wn.synsets(word) for lm in s.lemmas()}


# --------------------------------------------------------------------------------------------- synonym


def test_synonym_replacements_come_from_wordnet_and_keep_the_tags(wn, records) -> None:
    for r in records[:4]:
        original = response_text(r["rationale"], r["answer"])
        for seed in range(5):
            text, replacements = synonym_perturb(original, random.Random(seed), 0.3, wn)
            assert replacements, r["id"]
            assert text != original
            parts = split_response(text)
            assert parts is not None and parts[1] == r["answer"]
            assert text.startswith("<think>") and text.endswith(f"</think><answer>{r['answer']}</answer>")
            for word, synonym in replacements:
                assert synonym.lower() in nltk_lemmas(wn, word.lower()), (word, synonym)
                assert synonym.lower() != word.lower()
                assert synonym.lower() in [s.lower() for s in synonyms(word.lower(), wn=wn)]
                assert synonym in parts[0] or synonym.capitalize() in parts[0]
            # ~30 % of the replaceable words, never zero.
            assert 1 <= len(replacements) <= len(r["rationale"].split())


def test_large_can_become_big(wn) -> None:
    seen = set()
    for seed in range(20):
        text, replacements = synonym_perturb(
            "<think>The lesion is large.</think><answer>A</answer>", random.Random(seed), 1.0, wn
        )
        seen.update(s for w, s in replacements if w == "large")
        assert text.endswith("</think><answer>A</answer>")
    assert "big" in seen
    assert seen <= set(synonyms("large", wn=wn))


def test_protected_tokens_are_never_replaced(wn) -> None:
    text = "<think>The MRI and OCT show a T2-weighted signal of 3 cm at option B.</think><answer>B</answer>"
    for seed in range(10):
        out, replacements = synonym_perturb(text, random.Random(seed), 1.0, wn)
        for kept in ("MRI", "OCT", "T2-weighted", " 3 ", " B.", "<think>", "</think><answer>B</answer>"):
            assert kept in out
        assert {w for w, _ in replacements} <= {"show", "signal"}  # "option" is a format word


def test_no_replaceable_word_returns_the_text_unchanged(wn) -> None:
    text = "<think>The CT and the MRI.</think><answer>A</answer>"
    assert synonym_perturb(text, random.Random(0), 0.3, wn) == (text, [])


def test_bare_rationale_is_accepted(wn) -> None:
    out, replacements = synonym_perturb("The lesion is large.", random.Random(0), 1.0, wn)
    assert replacements and "<think>" not in out


# --------------------------------------------------------------------------------------------- deletion


def test_deletion_removes_phrases_and_keeps_the_tags() -> None:
    words = [f"w{i}" for i in range(20)]
    original = response_text(" ".join(words), "C")
    for seed in range(30):
        out = delete_phrases(original, random.Random(seed), 0.4)
        parts = split_response(out)
        assert parts is not None and parts[1] == "C"  # the letter stays: grade 0 is about the reasoning
        kept = [int(w[1:]) for w in parts[0].split()]
        assert kept == sorted(kept) and len(kept) == 20 - 8  # 40 % of 20 words deleted
        deleted = sorted(set(range(20)) - set(kept))
        runs = 1 + sum(b != a + 1 for a, b in zip(deleted, deleted[1:], strict=False))
        assert 2 <= runs <= 4


def test_deletion_of_a_short_rationale() -> None:
    out = delete_phrases("<think>one two three</think><answer>A</answer>", random.Random(0), 0.4)
    assert split_response(out) == ("two", "A")  # two one-word spans around one kept word
    with pytest.raises(RecordError) as info:
        delete_phrases("<think>only two</think><answer>A</answer>", random.Random(0), 0.4)
    assert info.value.reason == "too_short"


# --------------------------------------------------------------------------------------------- irrelevant


def test_wrong_option_always_points_to_a_wrong_letter(records) -> None:
    pool = DonorPool(records)
    for r in records[:4]:
        correct = r["answer"]
        for seed in range(25):
            response, donor_id = irrelevant_response(r, pool, random.Random(seed), "wrong_option")
            rationale, letter = split_response(response)
            assert letter != correct and letter in LETTERS[: len(r["options"])]
            donor = next(d for d in records if d["id"] == donor_id)
            assert donor_id != r["id"] and rationale == donor["rationale"]
            assert donor["question_type"] == r["question_type"]
            assert donor["answer_text"].lower() != r["answer_text"].lower()


def test_wrong_option_letter_names_the_donors_answer() -> None:
    # m2's correct answer is CT (B); m1 argues for MRI, which is m2's option A.
    m1 = rec("m1", MODALITY, ["CT", "MRI"], "B", "Bright fluid on a T2 sequence means MRI.", img=1)
    m2 = rec("m2", MODALITY, ["MRI", "CT"], "B", "Dense white bone means CT.", img=2)
    for seed in range(10):
        response, donor = irrelevant_response(m2, [m1, m2], random.Random(seed), "wrong_option")
        assert donor == "m1" and response == response_text(m1["rationale"], "A")


def test_other_record_uses_another_records_response(records) -> None:
    pool = DonorPool(records)
    for r in records[:4]:
        for seed in range(10):
            response, donor_id = irrelevant_response(r, pool, random.Random(seed), "other_record")
            donor = next(d for d in records if d["id"] == donor_id)
            assert donor_id != r["id"]
            assert response == response_text(donor["rationale"], donor["answer"])
            # With a choice available, the donor answers a different question about a different image.
            assert donor["answer_text"] != r["answer_text"] and donor["question"] != r["question"]


def test_irrelevant_without_donor() -> None:
    alone = rec("x", MODALITY, ["CT", "MRI"], "A", "Dense bone.")
    for mode in ("other_record", "wrong_option"):
        with pytest.raises(RecordError) as info:
            irrelevant_response(alone, [alone], random.Random(0), mode)
        assert info.value.reason == "no_donor"
    with pytest.raises(ValueError):
        irrelevant_response(alone, [alone], random.Random(0), "nonsense")


# --------------------------------------------------------------------------------------------- build_graded


def test_build_graded_four_rows_per_record(wn, records) -> None:
    cfg = GradeConfig(seed=3)
    rows, skipped = build_graded(records, cfg, wn=wn)
    assert skipped == {"no_rationale": 1}
    assert len(rows) == 4 * 4
    targets = {"original": 10.0, "synonym": 6.0, "deletion": 0.0, "irrelevant": -6.0}
    by_source: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_source.setdefault(row["source_id"], {})[row["grade"]] = row
        assert row["target"] == targets[row["grade"]]
        assert row["id"] == f"{row['source_id']}#{row['grade']}"
        assert split_response(row["response"]) is not None
        prov = json.loads(row["provenance"])
        assert prov["source"] == "test" and prov["grading"]["grade"] == row["grade"]
    for r in records[:4]:
        graded = by_source[r["id"]]
        assert list(graded) == ["original", "synonym", "deletion", "irrelevant"]
        assert graded["original"]["response"] == response_text(r["rationale"], r["answer"])
        for grade in ("synonym", "deletion", "irrelevant"):
            assert graded[grade]["response"] != graded["original"]["response"]
            # The row still describes its question: reference fields are copied unchanged.
            for key in ("question", "options", "answer", "rationale", "image", "modality"):
                assert graded[grade][key] == r[key]
        for w, s in json.loads(graded["synonym"]["provenance"])["grading"]["replacements"]:
            assert s.lower() in nltk_lemmas(wn, w.lower())
        assert split_response(graded["deletion"]["response"])[1] == r["answer"]
        mode = json.loads(graded["irrelevant"]["provenance"])["grading"]["mode"]
        if mode == "wrong_option":
            assert split_response(graded["irrelevant"]["response"])[1] != r["answer"]


def test_build_graded_custom_targets_and_grades(wn, records) -> None:
    cfg = GradeConfig(original=1.0, synonym=0.5, deletion=-0.5, irrelevant=-1.0)
    rows, _ = build_graded(records, cfg, wn=wn, grades=("original", "irrelevant"))
    assert {(r["grade"], r["target"]) for r in rows} == {("original", 1.0), ("irrelevant", -1.0)}
    with pytest.raises(ValueError):
        build_graded(records, cfg, wn=wn, grades=("perfect",))


def test_no_synonym_is_a_skip_not_a_mislabelled_row(wn) -> None:
    recs = [
        rec("s1", MODALITY, ["CT", "MRI"], "A", "The CT and the MRI.", img=1),
        rec("s2", MODALITY, ["MRI", "CT"], "A", "Bright fluid signal typical of MRI.", img=2),
    ]
    rows, skipped = build_graded(recs, GradeConfig(), wn=wn)
    assert skipped["no_synonym"] == 1
    assert [r["grade"] for r in rows if r["source_id"] == "s1"] == ["original", "deletion", "irrelevant"]


def test_determinism(wn, records) -> None:
    a, _ = build_graded(records, GradeConfig(seed=7), wn=wn)
    b, _ = build_graded(list(reversed(records)), GradeConfig(seed=7), wn=wn)
    key = lambda rows: sorted((r["id"], r["response"]) for r in rows)  # noqa: E731
    assert key(a) == key(b)  # a row depends on (seed, id, grade) only, not on record order
    c, _ = build_graded(records, GradeConfig(seed=8), wn=wn)
    assert key(a) != key(c)
    # The RNG does not use Python's salted hash(): these values hold in every process.
    assert rng_for(0, "rec-1", "synonym").random() == pytest.approx(0.02777135914057738)
    assert rng_for(0, "rec-1", "deletion").random() == pytest.approx(0.8407123871055837)


def test_graded_rows_make_a_dataset(wn, records) -> None:
    rows, _ = build_graded(records[:2], GradeConfig(), wn=wn)
    ds = to_dataset(rows, extra_features=GRADED_FEATURES)
    assert len(ds) == 8
    assert ds.features["target"].dtype == "float32"
    assert sorted(set(ds["grade"])) == ["deletion", "irrelevant", "original", "synonym"]
    assert ds[0]["source_id"] == "m1" and re.fullmatch(r"m1#original", ds[0]["id"])


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        GradeConfig(synonym_rate=0.0)
    with pytest.raises(ValueError):
        GradeConfig(deletion_min_phrases=1)
    with pytest.raises(ValueError):
        GradeConfig(irrelevant_modes={"made_up": 1.0})
    with pytest.raises(ValueError):
        GradeConfig(irrelevant_modes={"other_record": 0.0})
    assert GradeConfig().target("deletion") == 0.0


def test_records_without_images_are_counted() -> None:
    bad = make_record(
        id="b",
        question="q",
        options=["a", "b"],
        answer="A",
        rationale="r r r",
        modality="CT",
        question_type=MODALITY,
    )
    rows, skipped = build_graded([bad], GradeConfig(), grades=("original",))
    assert rows == [] and skipped == {"missing_image": 1}
