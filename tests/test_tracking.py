"""Secrets never reach MLflow params; nested configs flatten predictably."""

from __future__ import annotations

from medgr2.pipeline.tracking import REDACTED, flatten, redact


def test_secret_looking_keys_are_redacted_but_env_var_names_are_kept():
    cfg = {"generator": {"api_key": "sk-123", "api_key_env": "GEMINI_API_KEY", "nested": [{"token": "t"}]},
           "lr": 1e-3, "password": "", "max_new_tokens": 32, "hf_token": "hf_x"}
    out = redact(cfg)
    assert out["generator"]["api_key"] == REDACTED
    assert out["generator"]["api_key_env"] == "GEMINI_API_KEY"
    assert out["generator"]["nested"][0]["token"] == REDACTED
    assert out["lr"] == 1e-3 and out["password"] == ""
    assert out["max_new_tokens"] == 32 and out["hf_token"] == REDACTED
    assert "sk-123" not in repr(out)


def test_flatten_joins_keys_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
