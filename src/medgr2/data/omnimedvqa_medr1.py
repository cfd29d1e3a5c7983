"""The Med-R1 split layout of OmniMedVQA: ``root/Splits/{modality,question_type}/{train,test}/*.json``.

Each file is a list of ``{"image", "problem", "solution"}``: the options inline in ``problem``
(``A)CT, B)MRI``), the answer letter in ``solution`` (``<answer> C </answer>``). A file's name gives one
attribute only (``Splits/modality/`` the modality, ``Splits/question_type/`` the question type); the other is
filled by :class:`~medgr2.data.omnimedvqa_join.AttributeFiller` (joined, never guessed). Med-R1's own
``unknown_<split>.json`` (items whose raw record lacked ``modality_type``) gives no attribute at all.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from medgr2.data.omnimedvqa_io import SOURCE, Candidate, LoadResult, read_json_list
from medgr2.data.response_format import first_answer_content
from medgr2.data.schema import (
    LETTERS,
    UNKNOWN,
    RecordError,
    canonical_modality,
    canonical_question_type,
    repeated_options,
)

__all__ = [
    "AXES",
    "MEDR1_DIR",
    "MEDR1_SPLITS",
    "file_attribute",
    "join_key",
    "medr1_candidates",
    "parse_problem",
    "parse_solution",
    "tree_files",
]

AXES: tuple[str, ...] = ("modality", "question_type")
MEDR1_DIR = Path("Splits")
MEDR1_SPLITS: tuple[str, ...] = ("train", "test")

# Med-R1 names its cross-task files by abbreviation in places (AI, DD, LG, MR, OBA).
_QTYPE_FILE_ALIASES: dict[str, str] = {
    "ai": "Anatomy Identification",
    "dd": "Disease Diagnosis",
    "lg": "Lesion Grading",
    "mr": "Modality Recognition",
    "oba": "Other Biological Attributes",
    "biological attribute analysis": "Other Biological Attributes",
    "other biological attribute": "Other Biological Attributes",
}

# An option marker: "A)" or "(A)" at the start or after whitespace / punctuation.
_OPTION_MARKER = re.compile(r"(?:^|(?<=[\s,;:.?!]))\(?([A-Z])\)")
_OPTIONS_LABEL = re.compile(r"(?:options|choices)\s*:?\s*$", re.I)
_MARKER_LETTERS = "ABCDEFGHIJ"


def parse_problem(problem: str) -> tuple[str, list[str]]:
    """Split a Med-R1 ``problem`` into question text and options.

    Options are inline, marked ``A)``..``D)`` (or ``(A)``), with or without spaces, commas or newlines
    between them. The option block is the *last* run of markers A, B, C, ... in order, so a stray
    "A)" inside the question does not start it. Returns ``(question, [])`` when fewer than two
    markers are found.

    >>> parse_problem("Which modality? A)CT, B)X-ray, C)MRI, D)US")
    ('Which modality?', ['CT', 'X-ray', 'MRI', 'US'])
    """
    marks = [(m.start(), m.end(), m.group(1)) for m in _OPTION_MARKER.finditer(problem)]
    best: list[tuple[int, int, str]] = []
    for k, (_, _, ch) in enumerate(marks):
        if ch != "A":
            continue
        chain = [marks[k]]
        for m in marks[k + 1 :]:
            # Past D too: a fifth option must be seen (and the item skipped), not glued onto option D.
            if len(chain) == len(_MARKER_LETTERS):
                break
            if m[2] == _MARKER_LETTERS[len(chain)]:
                chain.append(m)
        if len(chain) >= 2:
            best = chain  # later chains win: the options come after the question
    if len(best) < 2:
        return problem.strip(), []
    question = _OPTIONS_LABEL.sub("", problem[: best[0][0]]).strip()
    options = []
    for j, (_, end, _) in enumerate(best):
        stop = best[j + 1][0] if j + 1 < len(best) else len(problem)
        options.append(problem[end:stop].strip().rstrip(",;").strip())
    return question, options


def parse_solution(solution: str) -> str | None:
    """The answer in a Med-R1 ``solution`` (``"<answer> C </answer>"`` -> ``"C"``), upper-cased; a bare
    ``"C"`` / ``"C)"`` is accepted too. None if nothing letter-like is found."""
    body = first_answer_content(solution)
    body = solution.strip() if body is None else body
    # A lone letter ("C", "(C)", "C.") or a letter with punctuation before more text ("C) MRI"); a
    # plain word such as "a lesion" is not read as an answer.
    m2 = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?|\(?([A-Za-z])[).:]\s.*", body, re.S)
    if not m2:
        return None
    return (m2.group(1) or m2.group(2)).upper()



# Med-R1's file for items whose raw record had no modality_type (its split script defaulted to "unknown").
_UNKNOWN_STEMS = frozenset({"unknown", "none", "null"})


def file_attribute(stem: str, axis: str) -> str:
    """The modality / question type named by a Med-R1 file stem (``CT(Computed Tomography)_train`` -> ``CT``),
    :data:`~medgr2.data.schema.UNKNOWN` for Med-R1's ``unknown_train``, else :class:`RecordError`."""
    name = re.sub(r"_(train|test|val)$", "", stem, flags=re.I).replace("_", " ").strip()
    if name.lower() in _UNKNOWN_STEMS:
        return UNKNOWN
    if axis == "modality":
        return canonical_modality(name)
    try:
        return canonical_question_type(name)
    except RecordError:
        alias = _QTYPE_FILE_ALIASES.get(name.lower())
        if alias is None:
            raise
        return alias


def join_key(image: str, text: str) -> tuple[str, str]:
    """What identifies one question across the two trees and QA_information: the image path (``./`` and
    backslashes normalised) and the text with runs of white space collapsed."""
    img = image.strip().replace("\\", "/")
    while img.startswith("./"):
        img = img[2:]
    return img, " ".join(text.split())


def tree_files(root: Path, axis: str) -> list[tuple[str, Path]]:
    """``(split, path)`` of every ``<Name>_<split>.json`` in ``root/Splits/<axis>``, train first; [] if absent."""
    tree = root / MEDR1_DIR / axis
    return [(sp, p) for sp in MEDR1_SPLITS for p in sorted((tree / sp).glob("*.json"))]


def _dataset_from_image(image_rel: str) -> str:
    """OmniMedVQA images live under ``Images/<Dataset>/...``; Med-R1 items name no data set otherwise."""
    parts = Path(image_rel).parts
    for k, part in enumerate(parts[:-1]):
        if part.lower() == "images" and k + 1 < len(parts) - 1:
            return parts[k + 1]
    return parts[-2] if len(parts) >= 2 else "unknown"


def medr1_candidates(root: Path, axis: str, result: LoadResult) -> Iterator[Candidate]:
    """Every item of the ``axis`` tree: a candidate whose other attribute is still :data:`UNKNOWN` (the
    caller fills it), or one counted skip. Provenance ``join`` holds the keys the filler needs."""
    if not (root / MEDR1_DIR / axis).is_dir():
        raise FileNotFoundError(
            f"Med-R1 layout expects {root / MEDR1_DIR / axis} (axis={axis!r}) with train/ and test/ folders")
    files = tree_files(root, axis)
    if not files:
        raise FileNotFoundError(f"no <Name>_{{train,test}}.json files under {root / MEDR1_DIR / axis}/{{train,test}}")
    for split, path in files:
        rel = path.relative_to(root).as_posix()
        try:
            known = file_attribute(path.stem, axis)
        except RecordError as e:
            # Every item of the file is lost: count them all so the totals add up.
            items, _ = read_json_list(path, rel, result)
            for i in range(len(items or [])):
                result.skip(e.reason, f"{rel} item {i}: file name does not name a known {axis}: {e}")
            continue
        items, encoding = read_json_list(path, rel, result)
        if items is None:
            continue
        for i, item in enumerate(items):
            try:
                yield _medr1_item(item, axis, known, split, rel, i, encoding)
            except RecordError as e:
                result.skip(e.reason, str(e))


def _medr1_item(item: object, axis: str, known: str, split: str, rel: str, i: int,
                encoding: str | None) -> Candidate:
    """One Med-R1 object -> candidate, or :class:`RecordError` (the message names file, item and id)."""
    where = f"{rel} item {i}"
    if not isinstance(item, dict):
        raise RecordError("malformed_record", f"{where}: expected a JSON object, got {type(item).__name__}")
    missing = [k for k in ("image", "problem", "solution") if not isinstance(item.get(k), str)]
    if missing:
        raise RecordError("missing_field", f"{where}: missing or non-string key(s) {missing}")
    image_rel = item["image"].strip()
    question, options = parse_problem(item["problem"])
    dataset = _dataset_from_image(image_rel)
    # Content-derived id: stable across runs and identical for the same item in both trees.
    digest = hashlib.sha1(f"{image_rel}\n{item['problem']}".encode()).hexdigest()[:16]
    rid = f"{dataset}/{digest}"
    where = f"{rel} item {i} (id {rid})"
    if len(options) < 2:
        raise RecordError("unparseable_options", f"{where}: no A)/B)... options found in problem {item['problem']!r}")
    if len(options) > len(LETTERS):
        raise RecordError("bad_option_count", f"{where}: {len(options)} options {options}; the schema allows {len(LETTERS)}")
    answer = parse_solution(item["solution"])
    if answer is None:
        raise RecordError("unparseable_answer", f"{where}: no answer letter in solution {item['solution']!r}")
    if answer not in LETTERS[: len(options)]:
        raise RecordError("answer_not_in_options", f"{where}: answer {answer!r} but only {len(options)} options {options}")
    if any(LETTERS.index(answer) in g for g in repeated_options(options)):
        raise RecordError("answer_is_repeated_option",
                          f"{where}: the answer {answer} ({options[LETTERS.index(answer)]!r}) is repeated in {options}")
    rec = {
        "id": rid,
        "question": question,
        "options": options,
        "answer": answer,
        "answer_text": options[LETTERS.index(answer)],
        "rationale": "",
        "modality": known if axis == "modality" else UNKNOWN,
        "question_type": known if axis == "question_type" else UNKNOWN,
        "dataset": dataset,
        "split": split,
        "provenance": {
            "source": SOURCE,
            "layout": "medr1",
            "file": rel,
            "index": i,
            "question_id": None,  # Med-R1 items carry no OmniMedVQA question_id
            "image_path": image_rel,
            "known_axis": axis,
            "attributes": {axis: "file name" if known != UNKNOWN else UNKNOWN},
            "join": {"problem": join_key(image_rel, item["problem"]), "question": join_key(image_rel, question)},
            **({"encoding": encoding} if encoding is not None else {}),
        },
    }
    return rec, where, image_rel
