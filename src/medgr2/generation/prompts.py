"""The generator's prompt strategies (paper §3, "Prompt-Driven Controllable Generation").

Three paradigms are compared in the paper: (1) direct instruction, (2) step-by-step reasoning and
(3) meta-cognitive introspection, where the model first reflects on which question type fits the image
and what answer structure is expected, and only then writes the item. The paper's own templates are in
its supplementary material, which we do not have; these are our versions, and every template carries a
``version`` that goes into each record's provenance so a changed wording never mixes silently with an
old one in an analysis.

Every strategy asks for ONE JSON object with the keys of :data:`RESPONSE_FIELDS`; :func:`response_schema`
is the matching schema in the form Gemini's ``response_schema`` takes (the only place it is defined).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from medgr2.data.schema import LETTERS, MAX_OPTIONS, MIN_OPTIONS, QUESTION_TYPES

RESPONSE_FIELDS: tuple[str, ...] = ("question", "options", "answer", "rationale", "question_type")

# Gemini structured output (OpenAPI-subset Schema, upper-case types). ``propertyOrdering`` matters:
# Gemini writes properties in that order, so the rationale is written *before* the answer letter
# (the letter is then a consequence of the reasoning rather than a guess justified afterwards).
_BASE_SCHEMA: dict[str, Any] = {
    "type": "OBJECT",
    "properties": {
        "question_type": {"type": "STRING", "enum": list(QUESTION_TYPES)},
        "question": {"type": "STRING"},
        "options": {
            "type": "ARRAY",
            "items": {"type": "STRING"},
            "minItems": MIN_OPTIONS,
            "maxItems": MAX_OPTIONS,
        },
        "rationale": {"type": "STRING"},
        "answer": {"type": "STRING", "enum": list(LETTERS)},
    },
    "required": list(RESPONSE_FIELDS),
    "propertyOrdering": ["question_type", "question", "options", "rationale", "answer"],
}

# The meta-cognitive strategy gets an extra, optional ``reflection`` property written FIRST: with
# structured output the model can only "think before writing" inside the JSON, so the reflection the
# prompt asks for has to be a property that precedes the item. Validation ignores it.
_REFLECTION_PROPERTY: dict[str, Any] = {"type": "STRING"}


def response_schema(with_reflection: bool = False) -> dict[str, Any]:
    """The JSON response schema for Gemini's ``response_schema`` (a fresh copy each call).

    ``with_reflection`` adds the optional ``reflection`` property (first in the ordering) that the
    meta-cognitive strategy uses.
    """
    schema = copy.deepcopy(_BASE_SCHEMA)
    if with_reflection:
        schema["properties"] = {"reflection": dict(_REFLECTION_PROPERTY), **schema["properties"]}
        schema["propertyOrdering"] = ["reflection", *schema["propertyOrdering"]]
    return schema


_JSON_SPEC = (
    "Return exactly ONE JSON object and nothing else, with these keys:\n"
    '  "question": the question text (it must be answerable only by looking at the image),\n'
    '  "options": a list of {n_options} distinct answer options (plain text, no letters),\n'
    '  "answer": the letter of the correct option ("A" is the first option, "B" the second, ...),\n'
    '  "rationale": a short explanation that points to what is visible in the image,\n'
    '  "question_type": "{question_type}".'
)

_DIRECT = (
    "You are given a {modality} medical image. Write one multiple-choice visual question about it of "
    'type "{question_type}".\n' + _JSON_SPEC
)

_STEP_BY_STEP = (
    "You are given a {modality} medical image. Write one multiple-choice visual question about it of "
    'type "{question_type}". Work step by step:\n'
    "1. Describe to yourself what is visible: the modality, the anatomy and any abnormal finding.\n"
    '2. Choose one finding that a "{question_type}" question can ask about.\n'
    "3. Write the question so that it cannot be answered without the image.\n"
    "4. Write the correct option and plausible but wrong distractors.\n"
    "5. Write the rationale as the step-by-step reasoning from the visible evidence to the answer.\n"
    + _JSON_SPEC
)

_METACOGNITIVE = (
    "You are given a {modality} medical image. Before writing anything, reflect on your own task:\n"
    "- Which of these question types does this image actually support, and why: "
    + ", ".join(QUESTION_TYPES)
    + '? The requested type is "{question_type}"; check that the image can answer such a question.\n'
    "- What answer structure is expected for that type (a modality name, an anatomical structure, a "
    "diagnosis, a grade, an attribute), and what makes a distractor plausible yet clearly wrong?\n"
    "- What could make the question unanswerable, ambiguous or answerable without the image? Avoid it.\n"
    'Put this reflection in an extra key "reflection", written first. Then write the item.\n' + _JSON_SPEC
)


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned prompt strategy.

    ``render`` gives the text part of the request; the image is sent beside it by the backend.
    """

    name: str
    version: str
    template: str
    with_reflection: bool = False

    def render(self, question_type: str, modality: str, n_options: int | None = None) -> str:
        """The prompt text for an image of ``modality`` and a requested ``question_type``.

        ``n_options`` (2–4) fixes the number of options; ``None`` lets the model choose 2–4.
        """
        if n_options is None:
            n_text = f"{MIN_OPTIONS} to {MAX_OPTIONS}"
        elif MIN_OPTIONS <= n_options <= MAX_OPTIONS:
            n_text = str(n_options)
        else:
            raise ValueError(f"n_options must be {MIN_OPTIONS}–{MAX_OPTIONS} or None, got {n_options}")
        return self.template.format(
            modality=modality or "medical", question_type=question_type, n_options=n_text
        )

    def response_schema(self) -> dict[str, Any]:
        """The structured-output schema that goes with this strategy."""
        return response_schema(self.with_reflection)


PROMPTS: dict[str, PromptTemplate] = {
    "direct": PromptTemplate("direct", "direct-v1", _DIRECT),
    "step_by_step": PromptTemplate("step_by_step", "step_by_step-v1", _STEP_BY_STEP),
    "metacognitive": PromptTemplate(
        "metacognitive", "metacognitive-v1", _METACOGNITIVE, with_reflection=True
    ),
}


def get_prompt(strategy: str) -> PromptTemplate:
    """Look up a strategy by name, with an error listing the known ones."""
    try:
        return PROMPTS[strategy]
    except KeyError:
        raise KeyError(f"unknown prompt strategy {strategy!r}; known: {', '.join(PROMPTS)}") from None


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Gemini's OpenAPI-subset schema -> standard JSON Schema (for vLLM / outlines guided decoding).

    >>> to_json_schema({"type": "ARRAY", "items": {"type": "STRING"}, "minItems": 2})
    {'type': 'array', 'items': {'type': 'string'}, 'minItems': 2}
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "propertyOrdering":
            continue  # JSON Schema has no ordering; guided decoders follow ``properties`` order
        if key == "type":
            out[key] = str(value).lower()
        elif key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = to_json_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    return out
