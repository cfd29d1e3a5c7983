"""What the Gemini API answers, read without guessing: error classes, retry waits, blocked and cut answers.

Pure functions over what ``google-genai`` hands back (``errors.APIError`` with ``.code``, ``.status``,
``.details`` = the JSON error body; ``GenerateContentResponse`` with ``prompt_feedback``, ``candidates``
and ``usage_metadata``), so that every wire shape has one place where it is interpreted and unit-tested.

Errors fall in three classes (see docs/generation.md):

* ``retry`` — 429, 408, 5xx other than :data:`TERMINAL_5XX`, timeouts, connection failures, a body that
  is not JSON: worth another attempt (backoff, ``RetryInfo.retryDelay`` / ``Retry-After`` honoured), and
  left pending for the next run when the attempts run out;
* ``final`` — any other 4xx (400 INVALID_ARGUMENT for a payload too large, 413, ...) and the 5xx in
  :data:`TERMINAL_5XX`: this request will never succeed, so it is failed for good and not resent;
* ``fatal`` — no request can succeed: a refused key (401, 403, or a 400 whose ``ErrorInfo.reason`` is
  ``API_KEY_INVALID``) or a model the API does not know (404): the stage stops at once.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: 5xx answers that no retry fixes: 501 NOT_IMPLEMENTED (method not supported) and 505 (HTTP version not
#: supported). 500 INTERNAL, 502, 503 UNAVAILABLE and 504 DEADLINE_EXCEEDED are transient and retried.
TERMINAL_5XX = frozenset({501, 505})

#: Finish reasons of an answer that ended normally.
_NORMAL_FINISH = frozenset({"STOP", "FINISH_REASON_UNSPECIFIED", ""})
_RETRY_DELAY = re.compile(r"^\s*([0-9.]+)\s*s\s*$")


def _exception_types(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """The named exception classes of whichever of httpx / httpx2 is installed (the SDK uses either)."""
    import importlib

    found: list[type[BaseException]] = []
    for module_name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.extend(getattr(module, n) for n in names if hasattr(module, n))
    return tuple(found)


_TIMEOUT_EXC = (TimeoutError, *_exception_types(("TimeoutException",)))
_CONNECTION_EXC = (ConnectionError, *_exception_types(("TransportError",)))


def _error_body(exc: BaseException) -> Mapping[str, Any]:
    """The ``error`` object of an API error's JSON body (``{}`` when there is none)."""
    details = getattr(exc, "details", None)
    if isinstance(details, Mapping):
        inner = details.get("error")
        return inner if isinstance(inner, Mapping) else details
    return {}


def error_reasons(exc: BaseException) -> set[str]:
    """The ``google.rpc.ErrorInfo.reason`` values of an API error (``{"API_KEY_INVALID"}``, ...)."""
    items = _error_body(exc).get("details") or []
    return {str(i["reason"]) for i in items if isinstance(i, Mapping) and i.get("reason")}


def error_message(exc: BaseException) -> str:
    """``"<code> <STATUS>: <message>"`` of an API error, else the exception's own text."""
    body = _error_body(exc)
    code = getattr(exc, "code", None) or body.get("code")
    status = getattr(exc, "status", None) or body.get("status") or ""
    message = getattr(exc, "message", None) or body.get("message")
    if code is None and message is None:
        return f"{type(exc).__name__}: {exc}"
    return f"{code} {status}: {message}".replace("  ", " ")


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's requested wait from a 429: the ``Retry-After`` header (seconds or HTTP date), else
    the ``google.rpc.RetryInfo.retryDelay`` ("37s") that the Gemini API puts in the error body."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    for item in _error_body(exc).get("details") or []:
        if isinstance(item, Mapping) and "retryDelay" in item:
            m = _RETRY_DELAY.match(str(item["retryDelay"]))
            if m:
                return float(m.group(1))
    return None


def classify_error(exc: BaseException) -> tuple[str, str]:
    """``(kind, action)`` for an exception raised by the client; ``action`` is ``retry``, ``final`` or
    ``fatal`` (module docstring). Kinds: ``rate_limited``, ``timeout`` (408 *is* a timeout), ``server_error``,
    ``connection``, ``bad_response`` (a 200 whose body is not JSON, e.g. a proxy's HTML page),
    ``credentials``, ``model_not_found``, ``http_<code>``, ``exception``."""
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        code = int(exc.code or 0)
        if code == 429:
            return "rate_limited", "retry"
        if code == 408:
            return "timeout", "retry"
        if code in (401, 403) or any(r.startswith("API_KEY_") for r in error_reasons(exc)):
            return "credentials", "fatal"
        if code == 404:
            return "model_not_found", "fatal"
        if 500 <= code < 600:
            return ("http_" + str(code), "final") if code in TERMINAL_5XX else ("server_error", "retry")
        return f"http_{code}", "final"
    if isinstance(exc, _TIMEOUT_EXC):
        return "timeout", "retry"
    if isinstance(exc, _CONNECTION_EXC):
        return "connection", "retry"
    if isinstance(exc, json.JSONDecodeError):
        return "bad_response", "retry"
    return "exception", "final"


@dataclass(frozen=True)
class Answer:
    """A ``generateContent`` response read: the answer ``text``, or the ``reason`` it is unusable
    (``safety``, ``prohibited_content``, ``blocklist``, ``recitation``, ``max_tokens``, ``empty``, ... —
    the API's block / finish reason in lower case) with a ``detail``; ``usage`` = reported token counts."""

    text: str | None
    reason: str | None = None
    detail: str = ""
    usage: dict[str, int] = field(default_factory=dict)


def _name(value: Any) -> str:
    """An enum (or the plain string the SDK keeps for values it does not know) as its upper-case name."""
    return str(getattr(value, "value", value) or "").upper()


def token_usage(response: Any) -> dict[str, int]:
    """``usageMetadata`` as ``{"prompt", "candidates", "thoughts"}`` token counts (missing -> 0)."""
    meta = getattr(response, "usage_metadata", None)
    if meta is None:
        return {}
    return {
        "prompt": int(meta.prompt_token_count or 0),
        "candidates": int(meta.candidates_token_count or 0),
        "thoughts": int(meta.thoughts_token_count or 0),
    }


def read_response(response: Any) -> Answer:
    """Interpret a ``GenerateContentResponse``: a blocked prompt (``promptFeedback.blockReason``), a
    candidate that stopped for another reason than ``STOP`` (``SAFETY`` with no parts, ``RECITATION``,
    ``MAX_TOKENS``, ...), no text at all, or the answer text — the concatenated text parts of the first
    candidate that are NOT thoughts (``thought: true`` parts are the model's reasoning, never the answer)."""
    usage = token_usage(response)
    feedback = getattr(response, "prompt_feedback", None)
    blocked = _name(getattr(feedback, "block_reason", None)) if feedback is not None else ""
    if blocked:
        return Answer(None, blocked.lower(), f"prompt blocked (promptFeedback.blockReason={blocked})", usage)
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        return Answer(None, "empty", "the response has no candidate", usage)
    cand = candidates[0]
    finish = _name(cand.finish_reason)
    parts = (cand.content.parts if cand.content is not None else None) or []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    if finish == "MAX_TOKENS":
        if text.strip():
            detail = (f"answer cut off at the output budget after {len(text)} characters: "
                      "raise generator.max_output_tokens")
        else:
            detail = (f"no answer text: the output budget was spent before the answer "
                      f"({usage.get('thoughts', 0)} thought tokens): raise generator.max_output_tokens "
                      "or lower generator.thinking_budget")
        return Answer(None, "max_tokens", detail, usage)
    if finish not in _NORMAL_FINISH:
        return Answer(None, finish.lower(), f"answer stopped (finishReason={finish})", usage)
    if not text.strip():
        return Answer(None, "empty", f"no answer text (finishReason={finish or 'none'})", usage)
    return Answer(text, usage=usage)


def safety_settings(value: Any) -> list[dict[str, str]] | None:
    """``generator.safety_settings`` as the API's list of ``{category, threshold}``: accepts a mapping
    ``{HARM_CATEGORY_...: BLOCK_...}`` (short to type on the command line) or that list; None -> None.
    Unknown names raise ``ValueError`` naming the valid ones (the API would answer 400 for every request)."""
    if not value:
        return None
    from google.genai import types

    items = (
        [{"category": k, "threshold": v} for k, v in value.items()]
        if isinstance(value, Mapping)
        else [dict(i) for i in value]
    )
    categories = {c.value for c in types.HarmCategory}
    thresholds = {t.value for t in types.HarmBlockThreshold}
    out = []
    for item in items:
        cat, thr = str(item.get("category", "")).upper(), str(item.get("threshold", "")).upper()
        if cat not in categories:
            raise ValueError(f"generator.safety_settings: unknown category {cat!r}; known: {sorted(categories)}")
        if thr not in thresholds:
            raise ValueError(f"generator.safety_settings: unknown threshold {thr!r} for {cat}; "
                             f"known: {sorted(thresholds)}")
        out.append({"category": cat, "threshold": thr})
    return out
