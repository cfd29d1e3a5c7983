"""Explicit decoding settings for ``generate()``.

``generate()`` fills every argument left unset from the checkpoint's ``generation_config.json``; the real
Qwen2.5-VL checkpoints ship ``do_sample: true, temperature: 1e-6, repetition_penalty: 1.05``, so passing only
``do_sample=False`` is not greedy decoding (the penalty still reshapes every step's scores). These helpers name
every setting that changes the distribution, so the checkpoint's file cannot change what is decoded.
"""

from __future__ import annotations

from typing import Any

#: Greedy decoding whatever the checkpoint says: no sampling, no beams, no penalty (top-k / top-p / temperature act
#: only when sampling; the neutral temperature and top_p keep transformers from warning about the checkpoint's).
GREEDY: dict[str, Any] = {"do_sample": False, "num_beams": 1, "temperature": 1.0, "top_p": 1.0,
                          "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def sampling(temperature: float, top_p: float | None = 1.0, top_k: int | None = 0,
             repetition_penalty: float = 1.0) -> dict[str, Any]:
    """Explicit ancestral-sampling settings (``top_k=0`` / ``top_p=1`` switch those filters off)."""
    return {"do_sample": True, "num_beams": 1, "temperature": float(temperature),
            "top_p": 1.0 if top_p is None else float(top_p), "top_k": 0 if top_k is None else int(top_k),
            "repetition_penalty": float(repetition_penalty), "no_repeat_ngram_size": 0}


def as_params(settings: dict[str, Any], prefix: str) -> dict[str, str]:
    """Settings as flat MLflow params (``{prefix}/{name}``)."""
    return {f"{prefix}/{k}": str(v) for k, v in settings.items()}
