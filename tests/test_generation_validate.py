"""Prompt strategies and candidate validation (medgr2.generation.prompts / .validate)."""

from __future__ import annotations

import json

import pytest
from generation_fixtures import toy_sources

from medgr2.data.schema import QUESTION_TYPES, RecordError, provenance, validate_record
from medgr2.generation import PROMPTS, candidate_id, get_prompt, parse_candidate, response_schema
from medgr2.generation.prompts import RESPONSE_FIELDS, to_json_schema

SOURCE = toy_sources(1)[0]
GOOD = {
    "question": "Which organ is shown?",
    "options": ["Liver", "Lung", "Kidney"],
    "answer": "B",
    "rationale": "The air-filled texture is typical of lung.",
    "question_type": "Anatomy Identification",
}


def parse(obj_or_text, **kw):
    text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
    args = dict(backend="test", model="m", prompt="direct", iteration=2, seed=7, sample_index=1)
    args.update(kw)
    return parse_candidate(text, SOURCE, **args)


def with_(**changes):
    obj = dict(GOOD)
    for k, v in changes.items():
        if v is None:
            obj.pop(k)
        else:
            obj[k] = v
    return obj


def test_three_strategies_render_differently_and_are_versioned():
    assert set(PROMPTS) == {"direct", "step_by_step", "metacognitive"}
    texts = {name: p.render("Lesion Grading", "CT", n_options=3) for name, p in PROMPTS.items()}
    assert len(set(texts.values())) == 3
    for name, text in texts.items():
        assert "Lesion Grading" in text and "CT" in text and "3 distinct" in text
        assert all(f'"{field}"' in text for field in RESPONSE_FIELDS)
        assert PROMPTS[name].version.startswith(name)
    assert "2 to 4" in PROMPTS["direct"].render("Disease Diagnosis", "MRI")
    # The meta-cognitive prompt reflects on question types and answer structure before writing.
    meta = texts["metacognitive"]
    assert "reflect" in meta.lower() and "answer structure" in meta
    assert all(q in meta for q in QUESTION_TYPES)
    with pytest.raises(ValueError):
        PROMPTS["direct"].render("Lesion Grading", "CT", n_options=5)
    with pytest.raises(KeyError, match="known: direct"):
        get_prompt("nope")


def test_response_schema_is_one_place_and_reflection_comes_first():
    base = response_schema()
    assert base["required"] == list(RESPONSE_FIELDS)
    assert base["properties"]["options"]["minItems"] == 2 and base["properties"]["options"]["maxItems"] == 4
    # The rationale is written before the letter.
    order = base["propertyOrdering"]
    assert order.index("rationale") < order.index("answer")
    meta = PROMPTS["metacognitive"].response_schema()
    assert meta["propertyOrdering"][0] == "reflection" and "reflection" not in meta["required"]
    assert "reflection" not in PROMPTS["direct"].response_schema()["properties"]
    assert to_json_schema(base)["properties"]["options"]["type"] == "array"


def test_good_candidate_becomes_a_valid_record_with_provenance():
    rec = parse(GOOD, defect="wrong_answer")
    validate_record(rec)
    assert rec["answer"] == "B" and rec["answer_text"] == "Lung"
    assert rec["image"] is SOURCE["image"] and rec["modality"] == SOURCE["modality"]
    assert rec["id"] == candidate_id(SOURCE["id"], 2, 7, "direct", 1)
    assert rec["id"] == parse(GOOD)["id"]  # the id depends on the request, not on the content
    assert rec["id"] != parse(GOOD, sample_index=2)["id"] != parse(GOOD, prompt="metacognitive")["id"]
    prov = provenance(rec)
    assert prov["backend"] == "test" and prov["model"] == "m"
    assert prov["prompt_strategy"] == "direct" and prov["prompt_version"] == PROMPTS["direct"].version
    assert prov["iteration"] == 2 and prov["seed"] == 7 and prov["source_id"] == SOURCE["id"]
    assert prov["defect"] == "wrong_answer" and len(prov["response_sha256"]) == 64
    assert "defect" not in provenance(parse(GOOD))


@pytest.mark.parametrize(
    "text",
    [
        "```json\n" + json.dumps(GOOD) + "\n```",
        "Here is the item:\n```\n" + json.dumps(GOOD) + "\n```\nHope it helps.",
        "Sure! " + json.dumps(GOOD) + " Done.",
        json.dumps(with_(options=["A) Liver", "B) Lung", "C) Kidney"])),
        json.dumps(with_(answer="(b)")),
        json.dumps(with_(answer="Lung")),
        json.dumps(with_(question_type="anatomy identification")),
        json.dumps({**GOOD, "reflection": "A lung image supports anatomy questions."}),
    ],
)
def test_tolerated_variations(text):
    rec = parse(text)
    assert rec["options"] == ["Liver", "Lung", "Kidney"] and rec["answer"] == "B"
    assert rec["question_type"] == "Anatomy Identification"


@pytest.mark.parametrize(
    "candidate, reason",
    [
        ("not json at all", "malformed_json"),
        (json.dumps(GOOD)[:-15], "malformed_json"),
        ("", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        (with_(question=None), "missing_field"),
        (with_(rationale=None), "missing_field"),
        (with_(answer=None), "missing_field"),
        (with_(question="  "), "missing_field"),
        (with_(options=["Liver"]), "bad_option_count"),
        (with_(options=["a", "b", "c", "d", "e"]), "bad_option_count"),
        (with_(options="Liver, Lung"), "bad_options"),
        (with_(answer="D"), "answer_not_in_options"),
        (with_(answer="Spleen"), "answer_not_in_options"),
        (with_(rationale=""), "empty_rationale"),
        (with_(question_type="Radiology Trivia"), "unknown_question_type"),
        (with_(options=["Liver", "liver", "Lung"]), "duplicate_options"),
    ],
)
def test_rejections_name_the_reason(candidate, reason):
    with pytest.raises(RecordError) as err:
        parse(candidate)
    assert err.value.reason == reason
