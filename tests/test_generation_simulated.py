"""The simulated generator: defect rates, determinism, what each defect does."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from generation_fixtures import toy_sources

from medgr2.data.prompting import restyle_rationale
from medgr2.data.schema import LETTERS, RecordError, index_of
from medgr2.generation import (
    DEFAULT_DEFECT_RATES,
    DEFECT_KINDS,
    GenRequest,
    SimulatedBackend,
    make_backend,
    parse_candidate,
    plan_requests,
)
from medgr2.generation.backends import GeneratorBackend

SOURCES = toy_sources(40)
BY_ID = {s["id"]: s for s in SOURCES}


def _requests(n_samples: int, strategy: str = "direct") -> list[GenRequest]:
    return plan_requests(SOURCES, strategy, samples_per_source=n_samples, seed=3)


def _parse(res, req):
    return parse_candidate(
        res.text,
        req.source,
        backend="simulated",
        model="m",
        prompt=req.strategy,
        iteration=0,
        seed=3,
        sample_index=req.sample_index,
        defect=res.defect,
    )


def test_defect_rates_match_config_within_sampling_error():
    requests = _requests(50)  # 2000 requests
    backend = SimulatedBackend(seed=11).with_pool(SOURCES)
    results = backend.generate(requests)
    n = len(results)
    counts = Counter(r.defect for r in results)
    for kind, p in DEFAULT_DEFECT_RATES.items():
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[kind] - n * p) <= 4 * sigma, (kind, counts[kind], n * p)
    clean = 1 - sum(DEFAULT_DEFECT_RATES.values())
    assert abs(counts[None] - n * clean) <= 4 * math.sqrt(n * clean * (1 - clean))


def restyled(src, rec, true_idx):
    return restyle_rationale(src["rationale"], list(rec["options"]), true_idx)


def test_each_defect_does_what_it_says():
    requests = _requests(25)
    results = SimulatedBackend(seed=5).with_pool(SOURCES).generate(requests)
    seen = Counter()
    letters = Counter()
    for req, res in zip(requests, results, strict=True):
        src = req.source
        truth = src["options"][index_of(src["answer"])]
        if res.defect == "broken_format":
            with pytest.raises(RecordError) as err:
                _parse(res, req)
            assert err.value.reason in {"malformed_json", "missing_field"}
            seen[res.defect] += 1
            continue
        rec = _parse(res, req)  # every other defect is well-formed: the reward model must catch it
        assert json.loads(rec["provenance"]).get("defect") == res.defect
        assert sorted(rec["options"]) == sorted(src["options"]) or res.defect == "mismatched_question"
        letters[rec["answer"]] += 1
        # The findings are the source's; the per-option checks follow the reshuffled options and still
        # conclude at the true answer (a wrong_answer item's letter then contradicts its own rationale).
        true_idx = rec["options"].index(truth) if truth in rec["options"] else -1
        if res.defect is None:
            assert rec["answer_text"] == truth and rec["question"] == src["question"]
            assert rec["rationale"] == restyled(src, rec, true_idx)
        elif res.defect == "wrong_answer":
            assert rec["answer_text"] != truth
            assert rec["rationale"] == restyled(src, rec, true_idx)
            assert rec["rationale"].endswith(f"{LETTERS[true_idx]}) {truth}? yes.")
        elif res.defect == "incoherent_rationale":
            assert rec["answer_text"] == truth
            words, full = rec["rationale"].split(), restyled(src, rec, true_idx).split()
            assert len(words) <= max(1, len(full) // 2) and set(words) <= set(full)
        elif res.defect == "mismatched_question":
            other = [s for s in SOURCES if s["question"] == rec["question"] and s["id"] != src["id"]]
            assert other and (rec["question"], rec["answer_text"]) != (src["question"], truth)
            assert rec["image"] is src["image"]  # the item no longer fits this image
        seen[res.defect] += 1
    assert set(seen) == {None, *DEFECT_KINDS}
    assert len(letters) >= 3  # options are reshuffled, so the correct letter varies


def test_deterministic_and_independent_of_batching():
    requests = _requests(2)
    backend = SimulatedBackend(seed=9).with_pool(SOURCES)
    whole = [(r.text, r.defect) for r in backend.generate(requests)]
    pieces = [
        (r.text, r.defect) for k in range(0, len(requests), 7) for r in backend.generate(requests[k : k + 7])
    ]
    assert whole == pieces
    other_seed = [(r.text, r.defect) for r in SimulatedBackend(seed=10).with_pool(SOURCES).generate(requests)]
    assert whole != other_seed


def test_rates_are_validated_and_configurable():
    with pytest.raises(ValueError, match="unknown defect"):
        SimulatedBackend({"typo": 0.1})
    with pytest.raises(ValueError, match="sum"):
        SimulatedBackend({"wrong_answer": 0.7, "broken_format": 0.5})
    clean = SimulatedBackend({}, seed=1).generate(_requests(1))
    assert all(r.defect is None for r in clean)
    all_wrong = SimulatedBackend({"wrong_answer": 1.0}, seed=1).generate(_requests(1))
    assert all(r.defect == "wrong_answer" for r in all_wrong)


def test_mismatch_without_any_other_source_is_left_clean():
    req = _requests(1)[:1]
    res = SimulatedBackend({"mismatched_question": 1.0}).generate(req)[0]
    assert res.defect is None and res.ok


def test_factory_and_protocol():
    backend = make_backend("simulated", seed=2, defect_rates={"wrong_answer": 0.5})
    assert isinstance(backend, SimulatedBackend) and isinstance(backend, GeneratorBackend)
    assert backend.defect_rates["wrong_answer"] == 0.5 and backend.defect_rates["broken_format"] == 0.0
    with pytest.raises(ValueError, match="known: simulated"):
        make_backend("gpt-17")
