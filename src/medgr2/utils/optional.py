"""Optional dependencies: the error a missing one raises and the one line saying how to install it.

vLLM serves two layers — the generator's ``backend=vllm`` (:mod:`medgr2.generation.local`) and GRPO's
``stage.rollout=vllm`` (:mod:`medgr2.training.vllm_rollouts`) — so its error lives under both.
"""

from __future__ import annotations


class VLLMNotInstalledError(ImportError):
    """vLLM is an optional, GPU-only dependency."""


#: The one-line install hint (the generator's wording; GRPO's rollouts point at their CPU path instead).
VLLM_HINT = "vLLM is not installed: pip install medgr2[vllm] on a GPU machine (or use backend=hf on CPU)"

__all__ = ["VLLM_HINT", "VLLMNotInstalledError"]
