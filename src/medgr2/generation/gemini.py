"""Gemini as the generator G_θ (the paper uses Gemini-2.0-Flash), through the ``google-genai`` client.

What the SDK does and does not do (checked in google-genai's source): it POSTs
``{base_url}/{api_version}/models/<model>:generateContent`` with the key in the ``x-goog-api-key`` header;
without ``HttpOptions.retry_options`` it does not retry at all; HTTP errors raise ``errors.ClientError``
(4xx) / ``errors.ServerError`` (5xx), both ``errors.APIError`` with ``.code`` and ``.response`` (the
httpx/httpx2 response, whose ``.headers`` carry ``Retry-After``); timeouts and connection failures surface
as httpx/httpx2 ``TimeoutException`` / ``TransportError``. So retries, backoff, rate limiting and the
spend cap live here, where they can be tested and counted.

The API key is read from the environment only, kept out of ``repr``, logs, error details and provenance
(error texts are redacted before they are stored or logged).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from medgr2.generation._util import image_bytes
from medgr2.generation.backends import GenRequest, GenResult
from medgr2.generation.gemini_wire import (
    TERMINAL_5XX,
    Answer,
    classify_error,
    error_message,
    read_response,
    retry_after_seconds,
    safety_settings,
)

logger = logging.getLogger(__name__)
#: Loggers that write one INFO line per HTTP call (50k a cycle at paper scale); quieted to WARNING unless
#: the user configured them.
_CHATTY_LOGGERS = ("httpx", "httpx2", "google_genai.models")

__all__ = ["TERMINAL_5XX", "GeminiBackend", "MissingAPIKeyError", "classify_error", "retry_after_seconds"]


class MissingAPIKeyError(RuntimeError):
    """The environment variable that should hold the API key is not set."""


class _RateLimiter:
    """Spaces calls at least ``60 / requests_per_minute`` seconds apart, across threads.

    Even spacing (no burst) is the simplest limiter that never exceeds a per-minute quota.
    """

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class GeminiBackend:
    """Generate candidates with a Gemini model through ``google-genai``.

    Image bytes and the prompt text are sent as the contents; the answer is forced to JSON with
    ``response_mime_type="application/json"`` and the strategy's ``response_schema``; ``safety_settings``,
    ``thinking_budget`` and ``max_output_tokens`` pass through to the API. Up to ``max_concurrency``
    requests run at once, spaced to ``requests_per_minute``.

    Errors (classified in :mod:`~medgr2.generation.gemini_wire`): rate limits (429, with ``Retry-After`` /
    ``RetryInfo.retryDelay`` honoured up to ``retry_after_max`` s), 5xx, timeouts and connection errors
    are retried up to ``max_retries`` times with exponential backoff and full jitter
    (``uniform(0, min(backoff_max, backoff_base·2^attempt))``) and stay pending when they run out; other
    4xx end the request for good (``final``); a refused key or an unknown model stops everything
    (``fatal``): the first such answer makes every later request return at once without a call.

    Answers that came back unusable (blocked prompt or answer, recitation, cut at ``MAX_TOKENS``, no text)
    are returned with their ``reason``, never as text. ``max_requests`` caps API calls (retries included)
    and ``max_tokens_budget`` the reported tokens (prompt + candidates + thoughts) over the backend's life;
    past either, requests return error ``spend_cap`` (pending for the next run). ``usage`` sums the token
    counts of every call.
    """

    name = "gemini"

    def __init__(
        self,
        model: str = "gemini-2.0-flash",
        api_key_env: str = "GEMINI_API_KEY",
        base_url: str | None = None,
        max_concurrency: int = 4,
        requests_per_minute: float | None = 60,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        timeout_s: float = 60,
        max_requests: int | None = None,
        temperature: float | None = None,
        retry_after_max: float = 120.0,
        max_tokens_budget: int | None = None,
        max_output_tokens: int | None = None,
        thinking_budget: int | None = None,
        safety_settings: Mapping[str, str] | list[Mapping[str, str]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise MissingAPIKeyError(
                f"the Gemini API key is read from the environment variable {api_key_env}, which is not set "
                f"or empty: `export {api_key_env}=...` (never put the key in a config file)"
            )
        from google import genai
        from google.genai import types

        for name in _CHATTY_LOGGERS:
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self._types = types
        self._secret = key  # kept only to redact it from error texts
        # vertexai=False: an ambient GOOGLE_GENAI_USE_VERTEXAI must not reroute the calls.
        self._client = genai.Client(
            api_key=key,
            vertexai=False,
            http_options=types.HttpOptions(base_url=base_url, timeout=max(1, int(timeout_s * 1000))),
        )
        self.model = model
        self.api_key_env = api_key_env
        self.base_url = base_url
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.timeout_s = float(timeout_s)
        self.max_requests = max_requests
        self.max_tokens_budget = max_tokens_budget
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.thinking_budget = thinking_budget
        self.safety_settings = _safety_settings(safety_settings)  # checked now, not at the first request
        self.retry_after_max = float(retry_after_max)
        self.batch_size = max(8, 4 * self.max_concurrency)
        self._sleep = sleep
        self._limiter = _RateLimiter(requests_per_minute)
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._fatal: str | None = None
        self.calls_made = 0
        self.usage: Counter = Counter()

    def __repr__(self) -> str:
        # Deliberately hand-written: the key must never appear, even by accident, in a repr.
        return (
            f"GeminiBackend(model={self.model!r}, api_key_env={self.api_key_env!r}, base_url={self.base_url!r}, "
            f"max_concurrency={self.max_concurrency}, max_requests={self.max_requests})"
        )

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change outputs. Operational knobs (concurrency, retries, spend caps, URL) are left
        out so that a run stopped by a spend cap can be resumed with a larger cap. The answer-shaping
        options appear only when set, so runs made before they existed keep their fingerprint."""
        fp: dict[str, Any] = {"name": self.name, "model": self.model, "temperature": self.temperature}
        for key in ("max_output_tokens", "thinking_budget", "safety_settings"):
            if getattr(self, key) is not None:
                fp[key] = getattr(self, key)
        return fp

    @property
    def spend_cap_reached(self) -> bool:
        """True once ``max_requests`` API calls have been made or ``max_tokens_budget`` tokens reported."""
        return self._cap_hit() is not None

    @property
    def tokens_used(self) -> int:
        """Prompt + candidate + thought tokens reported so far."""
        return int(self.usage["prompt"] + self.usage["candidates"] + self.usage["thoughts"])

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Run the requests concurrently; one result per request, in order; never raises per request."""
        if not requests:
            return []
        workers = min(self.max_concurrency, len(requests))
        if workers == 1:
            return [self._generate_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gemini") as pool:
            return list(pool.map(self._generate_one, requests))

    # -- internals ------------------------------------------------------------------------------------

    def _cap_hit(self) -> str | None:
        if self.max_requests is not None and self.calls_made >= self.max_requests:
            return f"max_requests={self.max_requests}"
        if self.max_tokens_budget is not None and self.tokens_used >= self.max_tokens_budget:
            return f"max_tokens_budget={self.max_tokens_budget}"
        return None

    def _reserve_call(self) -> str | None:
        """None when a call may be made (and counts it), else which cap stops it."""
        with self._lock:
            cap = self._cap_hit()
            if cap is None:
                self.calls_made += 1
            return cap

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0.0, min(self.backoff_max, self.backoff_base * (2.0**attempt)))

    def _call(self, req: GenRequest) -> Answer:
        types = self._types
        data, mime = image_bytes(req.source.get("image"))
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=types.Schema.model_validate(req.response_schema) if req.response_schema else None,
            temperature=self.temperature,
            seed=req.seed,
            max_output_tokens=self.max_output_tokens,
            thinking_config=(
                types.ThinkingConfig(thinking_budget=int(self.thinking_budget))
                if self.thinking_budget is not None
                else None
            ),
            safety_settings=(
                [types.SafetySetting(**s) for s in self.safety_settings] if self.safety_settings else None
            ),
        )
        response = self._client.models.generate_content(
            model=self.model,
            contents=[types.Part.from_bytes(data=data, mime_type=mime), req.prompt],
            config=config,
        )
        answer = read_response(response)
        with self._lock:
            self.usage.update(answer.usage)
        return answer

    def _fatal_line(self, kind: str, exc: BaseException) -> str:
        what = self._redact(error_message(exc))[:300]
        if kind == "credentials":
            return (f"the Gemini API refused the API key ({what}): put a valid key in the environment variable "
                    f"{self.api_key_env} and rerun the same command")
        return f"the Gemini API does not know generator.model={self.model!r} ({what}): fix generator.model"

    def _generate_one(self, req: GenRequest) -> GenResult:
        attempts = 0
        usage: Counter = Counter()
        kind, detail = "exception", ""
        for attempt in range(self.max_retries + 1):
            if self._fatal is not None:  # a bad key: no further call can succeed
                return GenResult(key=req.key, error="stopped", detail=self._fatal, attempts=attempts, fatal=True)
            cap = self._reserve_call()
            if cap is not None:
                logger.debug("gemini: spend cap %s reached; request %s left pending", cap, req.key)
                return GenResult(key=req.key, error="spend_cap", detail=cap, attempts=attempts,
                                 usage=dict(usage))
            self._limiter.wait()
            attempts += 1
            try:
                answer = self._call(req)
            except Exception as exc:  # classified below; a single request never raises
                kind, action = classify_error(exc)
                detail = self._redact(f"{type(exc).__name__}: {exc}")[:500]
                if action == "fatal":
                    with self._lock:
                        self._fatal = self._fatal or self._fatal_line(kind, exc)
                    return GenResult(key=req.key, error=kind, detail=self._fatal, attempts=attempts, fatal=True)
                if action == "final" or attempt == self.max_retries:
                    logger.warning(
                        "gemini: request %s failed (%s%s) after %d attempt(s): %s",
                        req.key,
                        kind,
                        ", for good" if action == "final" else "",
                        attempts,
                        detail,
                    )
                    return GenResult(key=req.key, error=kind, detail=detail, attempts=attempts,
                                     final=action == "final", usage=dict(usage))
                server_wait = retry_after_seconds(exc) if kind == "rate_limited" else None
                delay = (
                    min(server_wait, self.retry_after_max)
                    if server_wait is not None
                    else self._backoff(attempt)
                )
                logger.info(
                    "gemini: request %s got %s (attempt %d/%d), retrying in %.2fs",
                    req.key,
                    kind,
                    attempts,
                    self.max_retries + 1,
                    delay,
                )
                self._sleep(delay)
                continue
            usage.update(answer.usage)
            return GenResult(key=req.key, text=answer.text, reason=answer.reason, detail=answer.detail,
                             attempts=attempts, usage=dict(usage))
        return GenResult(key=req.key, error=kind, detail=detail, attempts=attempts)  # unreachable in practice


def _safety_settings(value: Any) -> list[dict[str, str]] | None:
    """Hydra hands mappings / lists as DictConfig / ListConfig: turn them into plain containers first."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    return safety_settings(value)
