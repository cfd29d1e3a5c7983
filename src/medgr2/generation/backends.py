"""The generator interface (G_θ), the offline simulated generator and the backend factory.

Every backend — simulated, Gemini (``gemini.py``), a local transformers VLM or vLLM (``local.py``) — takes
a list of :class:`GenRequest` and returns one :class:`GenResult` per request, in order. A single failed
request never raises: its result carries an ``error`` kind instead, so a batch of 256 is never lost to
one bad call and the caller can count and retry what failed.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from medgr2.data.prompting import restyle_rationale
from medgr2.data.schema import LETTERS, index_of
from medgr2.generation._util import derive_seed, stable_hash
from medgr2.generation.prompts import RESPONSE_FIELDS


@dataclass(frozen=True, eq=False)
class GenRequest:
    """One generation request: write an item for ``source``'s image.

    ``key`` is the id the resulting record will have (see ``validate.candidate_id``); ``seed`` is a
    per-request seed derived from the run seed so sampling backends are reproducible per request.
    """

    key: str
    source: Mapping[str, Any]
    prompt: str
    strategy: str
    question_type: str
    sample_index: int = 0
    seed: int = 0
    n_options: int | None = None
    response_schema: dict[str, Any] | None = None


@dataclass
class GenResult:
    """The outcome of one request.

    * ``text``: the raw answer (validation may still reject it);
    * ``reason``: the answer came back unusable and the backend knows why (``safety``, ``max_tokens``,
      ``recitation``, ``empty``, ...) — counted as a rejection with that reason, like a validation reject;
    * ``error``: no answer (``rate_limited``, ``server_error``, ``timeout``, ``connection``, ``http_<code>``,
      ``spend_cap``, ``credentials``, ``exception``) with a redacted ``detail``. By default the request stays
      pending and a rerun retries it; ``final`` marks an error that asking again will not fix (a 400 for this
      very request): it is failed for good, excluded and counted, and only ``retry_failed`` resends it;
      ``fatal`` says no request can succeed (a bad key): the run stops and everything not done stays pending.

    ``defect`` is set by backends that know what they got wrong (the simulated one); ``attempts`` counts
    API calls spent on this request, retries included; ``usage`` holds the token counts the API reported
    (``prompt``, ``candidates``, ``thoughts``), summed over those calls.
    """

    key: str
    text: str | None = None
    error: str | None = None
    detail: str = ""
    defect: str | None = None
    attempts: int = 1
    reason: str | None = None
    final: bool = False
    fatal: bool = False
    usage: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        """True when the backend produced text (which may still be rejected by validation)."""
        return self.error is None and self.text is not None


@runtime_checkable
class GeneratorBackend(Protocol):
    """What ``run_generation`` needs from a generator.

    Optional extras that ``run_generation`` uses when present: ``batch_size`` (requests per ``generate``
    call) and ``fingerprint() -> dict`` (the settings that change outputs, for resume checks).
    """

    name: str
    model: str

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """One result per request, in order; never raises for a single failed request."""
        ...


# ----------------------------------------------------------------------------------------------------
# Simulated generator
# ----------------------------------------------------------------------------------------------------

#: Default defect probabilities of the simulated generator (exactly one defect, or none, per item).
#: They are loosely modelled on what a strong VLM gets wrong when asked for medical VQA items: a
#: plausible item with the wrong letter is the most common failure, then items that ignore the image
#: (a question about a different image), then rationales that do not support the answer, and a few
#: responses that are not even valid JSON. 60% of items are clean.
DEFAULT_DEFECT_RATES: dict[str, float] = {
    "wrong_answer": 0.15,  # answer letter moved to another option; rationale unchanged (still argues the truth)
    "mismatched_question": 0.10,  # the whole item belongs to another image in the batch/pool
    "incoherent_rationale": 0.10,  # rationale words shuffled and half of them deleted
    "broken_format": 0.05,  # truncated JSON or a missing field: rejected by validation
}
DEFECT_KINDS: tuple[str, ...] = tuple(DEFAULT_DEFECT_RATES)


class SimulatedBackend:
    """Offline stand-in for an imperfect VLM generator (docs/field-facts.md, "Simulated generator").

    For each request it writes the JSON a perfect generator would write for the SOURCE record (which must
    be a correct record, e.g. from SynthMed): its question, options (reshuffled with a seeded RNG so the
    letters vary), answer and rationale. Then, with the probabilities in ``defect_rates``, it injects
    exactly one defect from :data:`DEFECT_KINDS`; the injected kind is returned as ``GenResult.defect`` and
    ends up in the record's provenance so the reward filter's effect can be measured.

    ``defect_rates`` replaces the defaults entirely (kinds left out have rate 0); rates must sum to ≤ 1.
    ``mismatched_question`` items are taken from ``pool`` when given (``run_generation`` binds all its
    sources with :meth:`with_pool`), else from the other requests of the same ``generate`` call; when no
    other source exists the defect cannot be injected and the item is written clean (``defect`` None). Output is a pure function of
    (``seed``, request key, source, pool or batch). ``latency_s`` sleeps per request (demos and
    kill/resume tests); it does not change outputs.
    """

    name = "simulated"

    def __init__(
        self,
        defect_rates: Mapping[str, float] | None = None,
        seed: int = 0,
        pool: Sequence[Mapping[str, Any]] | None = None,
        latency_s: float = 0.0,
        model: str = "simulated-v1",
        fence_rate: float = 0.2,
    ):
        rates = dict(DEFAULT_DEFECT_RATES if defect_rates is None else defect_rates)
        unknown = set(rates) - set(DEFECT_KINDS)
        if unknown:
            raise ValueError(f"unknown defect kinds {sorted(unknown)}; known: {', '.join(DEFECT_KINDS)}")
        if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1 + 1e-9:
            raise ValueError(f"defect rates must be ≥ 0 and sum to ≤ 1, got {rates}")
        self.defect_rates = {k: float(rates.get(k, 0.0)) for k in DEFECT_KINDS}
        self.seed = int(seed)
        self.pool = list(pool) if pool is not None else None
        self.latency_s = float(latency_s)
        self.model = model
        # Share of clean responses wrapped in ```json fences, as chat models often do; parsing accepts them.
        self.fence_rate = float(fence_rate)
        self.batch_size = 64

    def with_pool(self, pool: Sequence[Mapping[str, Any]]) -> SimulatedBackend:
        """A copy that draws ``mismatched_question`` items from ``pool`` (``run_generation`` passes all
        sources, so an item never depends on how requests were batched — resumed runs match)."""
        twin = copy.copy(self)
        twin.pool = list(pool)
        return twin

    def __repr__(self) -> str:
        return f"SimulatedBackend(defect_rates={self.defect_rates}, seed={self.seed})"

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change outputs (latency does not)."""
        pool_ids = None if self.pool is None else stable_hash([str(r.get("id")) for r in self.pool])
        return {
            "name": self.name,
            "model": self.model,
            "defect_rates": self.defect_rates,
            "seed": self.seed,
            "pool": pool_ids,
            "fence_rate": self.fence_rate,
        }

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Write one (possibly defective) JSON response per request."""
        pool = self.pool if self.pool is not None else [r.source for r in requests]
        results = []
        for req in requests:
            if self.latency_s:
                time.sleep(self.latency_s)
            try:
                text, defect = self._respond(req, pool)
                results.append(GenResult(key=req.key, text=text, defect=defect))
            except Exception as exc:  # a bad source record must not sink the batch
                results.append(
                    GenResult(key=req.key, error="exception", detail=f"{type(exc).__name__}: {exc}")
                )
        return results

    def _draw_defect(self, rng: random.Random) -> str | None:
        u = rng.random()
        acc = 0.0
        for kind in DEFECT_KINDS:
            acc += self.defect_rates[kind]
            if u < acc:
                return kind
        return None

    def _respond(self, req: GenRequest, pool: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
        rng = random.Random(derive_seed("simulated", self.seed, req.key))
        defect = self._draw_defect(rng)
        truth = req.source
        if defect == "mismatched_question":
            other = _pick_other(req.source, pool, rng)
            if other is None:
                defect = None
            else:
                truth = other
        question, options, answer_idx, rationale, qtype = _ground_truth(truth, req.question_type)

        perm = list(range(len(options)))
        rng.shuffle(perm)
        options = [options[p] for p in perm]
        answer_idx = perm.index(answer_idx)
        # A rationale that checks the options one by one names their letters: follow the new order.
        rationale = restyle_rationale(rationale, options, answer_idx)
        if defect == "wrong_answer":
            answer_idx = rng.choice([i for i in range(len(options)) if i != answer_idx])
        elif defect == "incoherent_rationale":
            words = rationale.split()
            rng.shuffle(words)
            rationale = " ".join(words[: max(1, len(words) // 2)])

        obj: dict[str, Any] = {
            "question_type": qtype,
            "question": question,
            "options": options,
            "rationale": rationale,
            "answer": LETTERS[answer_idx],
        }
        if defect == "broken_format":
            if rng.random() < 0.5:
                text = json.dumps(obj)
                # A proper prefix of an object without nested objects is never valid JSON.
                return text[: rng.randint(len(text) // 4, len(text) - 2)], defect
            del obj[rng.choice(RESPONSE_FIELDS)]
        text = json.dumps(obj, ensure_ascii=False)
        if rng.random() < self.fence_rate:
            text = f"```json\n{text}\n```"
        return text, defect


def _ground_truth(rec: Mapping[str, Any], requested_qtype: str) -> tuple[str, list[str], int, str, str]:
    options = [str(o) for o in rec["options"]]
    answer_idx = index_of(str(rec["answer"]))
    rationale = str(rec.get("rationale") or "").strip()
    if not rationale:
        # Benchmarks such as OmniMedVQA have no rationale; a perfect generator would still write one.
        rationale = f"The image shows the finding the question asks about, which is {options[answer_idx]}."
    qtype = str(rec.get("question_type") or requested_qtype)
    return str(rec["question"]), options, answer_idx, rationale, qtype


def _pick_other(
    source: Mapping[str, Any], pool: Sequence[Mapping[str, Any]], rng: random.Random
) -> Mapping[str, Any] | None:
    """A record from ``pool`` whose item does not fit ``source``'s image (prefer a different QA pair)."""
    sid = source.get("id")
    mine = (source.get("question"), _answer_text(source))
    # A few random draws find one almost always and keep this O(1) for large pools; the scan below only
    # runs for tiny or degenerate pools.
    for _ in range(16):
        cand = pool[rng.randrange(len(pool))] if pool else None
        if cand is not None and cand.get("id") != sid and (cand.get("question"), _answer_text(cand)) != mine:
            return cand
    others = [r for r in pool if r.get("id") != sid]
    different = [r for r in others if (r.get("question"), _answer_text(r)) != mine]
    choices = different or others
    return rng.choice(choices) if choices else None


def _answer_text(rec: Mapping[str, Any]) -> str:
    try:
        return str(rec["options"][index_of(str(rec["answer"]))])
    except (KeyError, IndexError, ValueError):
        return ""


# ----------------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------------


_BACKENDS: dict[str, str] = {
    "simulated": "medgr2.generation.backends:SimulatedBackend",
    "gemini": "medgr2.generation.gemini:GeminiBackend",
    "hf": "medgr2.generation.local:HFBackend",
    "vllm": "medgr2.generation.local:VLLMBackend",
}


def make_backend(name: str, **kwargs: Any) -> GeneratorBackend:
    """Build a backend by name (``simulated``, ``gemini``, ``hf``, ``vllm``) with its keyword arguments.

    Modules are imported lazily so that, e.g., the simulated backend does not import google-genai.
    """
    import importlib

    key = name.lower().replace("-", "_")
    key = {"sim": "simulated", "transformers": "hf", "huggingface": "hf"}.get(key, key)
    if key not in _BACKENDS:
        raise ValueError(f"unknown generator backend {name!r}; known: {', '.join(_BACKENDS)}")
    module_name, cls_name = _BACKENDS[key].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**kwargs)
