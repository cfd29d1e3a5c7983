"""Secrets never reach logs, MLflow or saved configs: the one redaction of a config, used by the tracker,
the loop's saved config and the printed config tree."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Whole key names or their last "_" part: "hf_token" and "api_key" are secrets, "max_new_tokens" is not.
SECRET_PATTERN = re.compile(r"(^|[_-])(api[_-]?key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
REDACTED = "***"


def redact(obj: Any) -> Any:
    """A copy of a nested dict/list with values under secret-looking keys replaced by ``***``.

    Keys naming an environment variable (``api_key_env``) keep their value: the name is not the secret.
    """
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            secret = SECRET_PATTERN.search(str(k)) and not str(k).endswith("_env")
            out[k] = REDACTED if secret and v not in (None, "") else redact(v)
        return out
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    return obj


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a redacted plain dict (what is saved and logged)."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


__all__ = ["REDACTED", "SECRET_PATTERN", "redact", "resolved_config"]
