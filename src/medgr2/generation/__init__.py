"""The generator G_θ (paper §3): prompt strategies, backends, validation and resumable generation.

Typical use::

    from medgr2.generation import SimulatedBackend, run_generation, load_generated

    summary = run_generation(sources, SimulatedBackend(seed=0), "metacognitive", out_dir)
    candidates = load_generated(out_dir)

Backends other than the simulated one are imported lazily (``make_backend("gemini", ...)``) so that
importing this package never needs google-genai, torch or vLLM.
"""

from medgr2.generation.backends import (
    DEFAULT_DEFECT_RATES,
    DEFECT_KINDS,
    GeneratorBackend,
    GenRequest,
    GenResult,
    SimulatedBackend,
    make_backend,
)
from medgr2.generation.prompts import PROMPTS, PromptTemplate, get_prompt, response_schema
from medgr2.generation.run import GenerationStopped, GenerationSummary, plan_requests, run_generation
from medgr2.generation.store import GenerationConfigError, load_generated
from medgr2.generation.validate import REJECT_REASONS, candidate_id, parse_candidate

__all__ = [
    "DEFAULT_DEFECT_RATES",
    "DEFECT_KINDS",
    "PROMPTS",
    "REJECT_REASONS",
    "GenRequest",
    "GenResult",
    "GenerationConfigError",
    "GenerationStopped",
    "GenerationSummary",
    "GeneratorBackend",
    "PromptTemplate",
    "SimulatedBackend",
    "candidate_id",
    "get_prompt",
    "load_generated",
    "make_backend",
    "parse_candidate",
    "plan_requests",
    "response_schema",
    "run_generation",
]
