"""Turn a generator's raw text into a schema record, or reject it with a machine-readable reason.

Rejections raise :class:`medgr2.data.schema.RecordError`; its ``reason`` is one of
:data:`REJECT_REASONS` (the caller counts them with a ``Counter``). Validation is about *form* only:
a well-formed item with a wrong answer or a question that does not fit the image passes here — judging
content is the reward model's job (paper §3), and the simulated generator's ``defect`` provenance lets
analyses measure how much of it the reward filter removes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from medgr2.data.schema import (
    LETTERS,
    MAX_OPTIONS,
    MIN_OPTIONS,
    RecordError,
    canonical_modality,
    canonical_question_type,
    make_record,
    validate_record,
)
from medgr2.generation._util import sha256_text, stable_hash
from medgr2.generation.prompts import RESPONSE_FIELDS, PromptTemplate, get_prompt

REJECT_REASONS: tuple[str, ...] = (
    "malformed_json",
    "missing_field",
    "bad_options",
    "bad_option_count",
    "duplicate_options",
    "answer_not_in_options",
    "empty_rationale",
    "unknown_question_type",
)

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
# "B", "b", "(B)", "B)", "B.", "B: text", "B) text" -> "B"
_LETTER = re.compile(r"^\(?([A-Za-z])\)?(?:[.):]\s*.*|\s+.*)?$", re.DOTALL)
# "A) CT", "A. CT", "(A) CT", "A: CT" — option texts some models prefix with their letter.
_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Da-d])[.):]\s*")


def candidate_id(source_id: str, iteration: int, seed: int, strategy: str, sample_index: int) -> str:
    """The stable id of a generated candidate: a hash of what requested it (never of its content).

    The same request always maps to the same id, which is what makes generation resumable and lets
    a rerun be compared row by row with an uninterrupted run.
    """
    return "gen-" + stable_hash(str(source_id), int(iteration), int(seed), str(strategy), int(sample_index))


def extract_json_object(raw_text: str) -> dict[str, Any]:
    """Parse the JSON object in a response: bare, inside a ```json fence, or embedded in prose.

    Raises ``RecordError("malformed_json")`` when there is no JSON object to be found.
    """
    text = (raw_text or "").strip()
    if not text:
        raise RecordError("malformed_json", "empty response")
    attempts = [text]
    fenced = _FENCE.search(text)
    if fenced:
        attempts.append(fenced.group(1).strip())
    # Local VLMs often wrap the object in a sentence; the outermost braces are the best guess.
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        attempts.append(text[first : last + 1])
    for candidate in attempts:
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
        raise RecordError("malformed_json", f"response is JSON {type(obj).__name__}, not an object")
    raise RecordError("malformed_json", f"response is not valid JSON: {_snippet(text)}")


def parse_candidate(
    raw_text: str,
    source: Mapping[str, Any],
    *,
    backend: str,
    model: str,
    prompt: PromptTemplate | str,
    iteration: int,
    seed: int,
    sample_index: int = 0,
    defect: str | None = None,
    requested_question_type: str | None = None,
) -> dict[str, Any]:
    """A generator response for ``source`` -> a validated schema record, or ``RecordError``.

    The image and modality come from the source record (the generator saw that image); ``split`` and
    ``dataset`` are the source's too. ``provenance`` records backend, model, prompt strategy and version,
    iteration, seed, sample index, the sha256 of the raw response, the source id and — when the backend
    knows it (the simulated one does) — the injected ``defect``.
    """
    template = get_prompt(prompt) if isinstance(prompt, str) else prompt
    source_id = str(source.get("id", ""))
    rid = candidate_id(source_id, iteration, seed, template.name, sample_index)
    obj = extract_json_object(raw_text)

    for key in RESPONSE_FIELDS:
        if obj.get(key) is None:
            raise RecordError("missing_field", f"{rid}: response has no {key!r}")
    question = _text(obj["question"])
    if not question:
        raise RecordError("missing_field", f"{rid}: question is empty")
    options = _options(obj["options"], rid)
    answer = _answer_letter(obj["answer"], options, rid)
    rationale = _text(obj["rationale"])
    if not rationale:
        raise RecordError("empty_rationale", f"{rid}: rationale is empty")
    question_type = canonical_question_type(_text(obj["question_type"]))

    prov: dict[str, Any] = {
        "kind": "generated",
        "backend": backend,
        "model": model,
        "prompt_strategy": template.name,
        "prompt_version": template.version,
        "iteration": int(iteration),
        "seed": int(seed),
        "sample_index": int(sample_index),
        "response_sha256": sha256_text(raw_text),
        "source_id": source_id,
    }
    if defect is not None:
        prov["defect"] = defect
    if requested_question_type is not None:
        prov["requested_question_type"] = requested_question_type
    rec = make_record(
        id=rid,
        image=source.get("image"),
        question=question,
        options=options,
        answer=answer,
        rationale=rationale,
        modality=canonical_modality(str(source.get("modality", ""))),
        question_type=question_type,
        dataset=str(source.get("dataset", "")),
        split=str(source.get("split", "")),
        provenance=prov,
    )
    validate_record(rec)  # the shared checks (image present, answer_text consistent, ...)
    return rec


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value).strip() if value is not None else ""


def _options(value: Any, rid: str) -> list[str]:
    if not isinstance(value, list):
        raise RecordError("bad_options", f"{rid}: options is a {type(value).__name__}, not a list")
    if not MIN_OPTIONS <= len(value) <= MAX_OPTIONS:
        raise RecordError(
            "bad_option_count", f"{rid}: {len(value)} options (need {MIN_OPTIONS}–{MAX_OPTIONS})"
        )
    if not all(isinstance(o, str | int | float) and not isinstance(o, bool) for o in value):
        raise RecordError("bad_options", f"{rid}: options must be strings")
    options = [str(o).strip() for o in value]
    # Strip "A) " style prefixes only when every option carries its own letter in order, so an
    # option that merely starts with a letter and a dot ("C. difficile") is left alone.
    matches = [_OPTION_PREFIX.match(o) for o in options]
    if all(m and m.group(1).upper() == LETTERS[i] for i, m in enumerate(matches)):
        options = [o[m.end() :].strip() for o, m in zip(options, matches, strict=True) if m]
    if not all(options):
        raise RecordError("bad_options", f"{rid}: an option is empty")
    if len({o.lower() for o in options}) != len(options):
        raise RecordError("duplicate_options", f"{rid}: options repeat: {options}")
    return options


def _answer_letter(value: Any, options: list[str], rid: str) -> str:
    text = _text(value)
    # Some models answer with the option text instead of its letter: unambiguous, so accept it. This
    # is checked first so that an option text like "A large lesion" is not read as the letter "A".
    lowered = [o.lower() for o in options]
    if len(text) > 1 and text.lower() in lowered:
        return LETTERS[lowered.index(text.lower())]
    m = _LETTER.match(text)
    if m and m.group(1).upper() in LETTERS[: len(options)]:
        return m.group(1).upper()
    raise RecordError(
        "answer_not_in_options", f"{rid}: answer {_snippet(text)!r} is not one of {len(options)} options"
    )


def _snippet(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "…"
