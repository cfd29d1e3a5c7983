"""Transforms of D_grade used by the reward stage (:mod:`medgr2.pipeline.reward`): the held-out split by
source record, the wrong-letter rows (pairwise probes, or hard negatives at the irrelevant grade) and the
image-grounding negatives (a response with another record's image, at the irrelevant grade)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from medgr2.data.grade_config import IMAGE_SWAP_GRADE, PROBE_GRADE, rng_for
from medgr2.data.response_format import response_text, split_response
from medgr2.data.schema import LETTERS
from medgr2.utils.hashing import image_key


def split_by_source(source_ids: Sequence[str], val_fraction: float, seed: int = 0,
                    max_val_sources: int | None = None) -> tuple[list[int], list[int]]:
    """Row indices ``(train, val)`` with every source record's rows on one side (no leakage).

    The held-out sources are the ``val_fraction`` (at most ``max_val_sources``) with the smallest
    SHA-256 of ``(seed, source_id)``: the choice depends on the ids only, not on row order, and stays
    stable when more data is added.
    """
    sources = sorted(set(source_ids))
    n_val = min(len(sources) - 1, max(1, round(val_fraction * len(sources)))) if val_fraction > 0 else 0
    if max_val_sources is not None:
        n_val = min(n_val, int(max_val_sources))

    def h(sid: str) -> str:
        return hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest()

    held = set(sorted(sources, key=h)[:max(0, n_val)])
    train = [i for i, s in enumerate(source_ids) if s not in held]
    val = [i for i, s in enumerate(source_ids) if s in held]
    return train, val


def wrong_letter_rows(rows: Sequence[Mapping[str, Any]], seed: int = 0, target: float = math.nan,
                      rate: float = 1.0) -> list[dict[str, Any]]:
    """For ``original`` rows: the same rationale with a wrong answer letter (grade ``wrong_letter``).

    With ``target`` NaN these are the pairwise probes of the reward stage (R_φ should score the original
    higher); with ``target`` = the irrelevant grade's value they are hard negatives for D_grade — a
    fluent, image-consistent rationale whose final answer is hallucinated. ``rate``: share of the
    records that get one (chosen per source id, deterministically). The wrong letter is drawn with
    :func:`rng_for` ``(seed, source_id, "wrong_letter")``, so a probe and a hard negative of the same record
    are the same text.
    """
    out = []
    for row in rows:
        if row["grade"] != "original":
            continue
        sid = str(row["source_id"])
        if rate < 1.0 and rng_for(seed, sid, "wrong_letter_pick").random() >= rate:
            continue
        parts = split_response(row["response"])
        n = len(row["options"] or [])
        if parts is None or n < 2:
            continue
        rationale, letter = parts
        wrong = [c for c in LETTERS[:n] if c != letter.strip().upper()]
        choice = rng_for(seed, sid, PROBE_GRADE).choice(wrong)
        prov = json.loads(row.get("provenance") or "{}")
        prov["grading"] = {"grade": PROBE_GRADE, "seed": seed, "letter": choice}
        out.append({**row, "id": f"{sid}#{PROBE_GRADE}", "response": response_text(rationale, choice),
                    "target": target, "grade": PROBE_GRADE, "provenance": json.dumps(prov, sort_keys=True)})
    return out


def wrong_letter_probes(rows: Sequence[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The pairwise probes: :func:`wrong_letter_rows` with target NaN for every ``original`` row."""
    return wrong_letter_rows(rows, seed)


def image_swap_rows(rows: Sequence[Mapping[str, Any]], seed: int = 0, target: float = math.nan,
                    rate: float = 1.0, tries: int = 16) -> list[dict[str, Any]]:
    """For ``original`` rows: the same reference response with the image of another record (grade
    ``image_swap``), an image-grounding negative.

    Every other grade of D_grade changes the text; a reward model can score all of them without looking at
    the image. Here only the image differs from the top-graded row, so R_φ must read the image to score it
    low. Rows come out in source-id order. ``rate``: share of the records that get one (chosen per source id, deterministically); the donor is
    drawn with :func:`rng_for` ``(seed, source_id, "image_swap")`` among the other records, and one whose
    stored image is identical (the same picture under two ids) is never taken — after ``tries`` draws of
    identical images the record gets none. Images are compared on their stored bytes
    (:func:`medgr2.utils.hashing.image_key`), so pass the undecoded rows.
    """
    # Sorted by source id: a record's donor depends on which records exist, not on their order.
    originals = sorted((r for r in rows if r["grade"] == "original"), key=lambda r: str(r["source_id"]))
    if len(originals) < 2:
        return []
    keys = [image_key(r.get("image")) for r in originals]
    out = []
    for i, row in enumerate(originals):
        sid = str(row["source_id"])
        if keys[i] == "none" or (rate < 1.0 and rng_for(seed, sid, "image_swap_pick").random() >= rate):
            continue  # no image to swap, or not picked
        rng = rng_for(seed, sid, IMAGE_SWAP_GRADE)
        donor = None
        for _ in range(tries):
            j = rng.randrange(len(originals) - 1)
            j = j + 1 if j >= i else j  # any record but this one
            if keys[j] not in (keys[i], "none"):
                donor = originals[j]
                break
        if donor is None:
            continue  # no other picture found
        prov = json.loads(row.get("provenance") or "{}")
        prov["grading"] = {"grade": IMAGE_SWAP_GRADE, "seed": seed, "image_from": str(donor["source_id"])}
        out.append({**row, "image": donor["image"], "id": f"{sid}#{IMAGE_SWAP_GRADE}", "target": target,
                    "grade": IMAGE_SWAP_GRADE, "provenance": json.dumps(prov, sort_keys=True)})
    return out


def held_out_probes(rows: Sequence[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """R_φ's pairwise probes of the held-out records (target NaN: scored, never trained on): for every
    ``original`` row the same rationale with a wrong letter (:func:`wrong_letter_rows`) and the same response
    with another held-out record's image (:func:`image_swap_rows`). R_φ should score the original higher
    than both: the first needs the letter read against the rationale, the second needs the image."""
    return wrong_letter_rows(rows, seed) + image_swap_rows(rows, seed)


__all__ = ["held_out_probes", "image_swap_rows", "split_by_source", "wrong_letter_probes", "wrong_letter_rows"]
