"""Gemini as the generator G_θ (the paper uses Gemini-2.0-Flash), through the ``google-genai`` client.

What the SDK does and does not do (checked in google-genai's source, DESIGN.md §5): it POSTs
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

import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from medgr2.generation._util import image_bytes
from medgr2.generation.backends import GenRequest, GenResult

logger = logging.getLogger(__name__)

#: Error kinds that are worth another attempt.
RETRYABLE_KINDS = frozenset({"rate_limited", "server_error", "timeout", "connection", "bad_response"})


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
_RETRY_DELAY = re.compile(r"^\s*([0-9.]+)\s*s\s*$")


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
    details = getattr(exc, "details", None)
    if isinstance(details, dict):
        for item in (details.get("error") or {}).get("details") or []:
            if isinstance(item, dict) and "retryDelay" in item:
                m = _RETRY_DELAY.match(str(item["retryDelay"]))
                if m:
                    return float(m.group(1))
    return None


def classify_error(exc: BaseException) -> tuple[str, bool]:
    """``(kind, retryable)`` for an exception raised by the client.

    429 -> ``rate_limited``; 408 and timeouts -> ``timeout`` (408 *is* a timeout, so it is retried like
    one); 5xx -> ``server_error``; connection failures -> ``connection``; a body that is not JSON (a proxy's
    HTML error page with status 200) -> ``bad_response``, retried; other 4xx -> ``http_<code>``,
    not retried (a bad request or a bad key does not get better by asking again).
    """
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        code = int(exc.code or 0)
        if code == 429:
            return "rate_limited", True
        if code == 408:
            return "timeout", True
        if 500 <= code < 600:
            return "server_error", True
        return f"http_{code}", False
    if isinstance(exc, _TIMEOUT_EXC):
        return "timeout", True
    if isinstance(exc, _CONNECTION_EXC):
        return "connection", True
    if isinstance(exc, json.JSONDecodeError):
        return "bad_response", True
    return "exception", False


class GeminiBackend:
    """Generate candidates with a Gemini model through ``google-genai``.

    Image bytes and the prompt text are sent as the contents; the answer is forced to JSON with
    ``response_mime_type="application/json"`` and the strategy's ``response_schema``. Up to
    ``max_concurrency`` requests run at once, spaced to ``requests_per_minute``. Rate limits (429, with
    ``Retry-After`` honoured up to ``retry_after_max`` s), 5xx, timeouts and connection errors are
    retried up to ``max_retries`` times with exponential backoff and full jitter
    (``uniform(0, min(backoff_max, backoff_base·2^attempt))``). ``max_requests`` caps the total number of
    API calls, retries included, over the backend's life; once reached, remaining requests return error
    ``spend_cap`` (and stay pending for the next run).
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
        self.temperature = temperature
        self.retry_after_max = float(retry_after_max)
        self.batch_size = max(8, 4 * self.max_concurrency)
        self._sleep = sleep
        self._limiter = _RateLimiter(requests_per_minute)
        self._rng = random.Random()
        self._lock = threading.Lock()
        self.calls_made = 0

    def __repr__(self) -> str:
        # Deliberately hand-written: the key must never appear, even by accident, in a repr.
        return (
            f"GeminiBackend(model={self.model!r}, api_key_env={self.api_key_env!r}, base_url={self.base_url!r}, "
            f"max_concurrency={self.max_concurrency}, max_requests={self.max_requests})"
        )

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change outputs. Operational knobs (concurrency, retries, spend cap, URL) are left
        out so that a run stopped by the spend cap can be resumed with a larger cap."""
        return {"name": self.name, "model": self.model, "temperature": self.temperature}

    @property
    def spend_cap_reached(self) -> bool:
        """True once ``max_requests`` API calls have been made."""
        return self.max_requests is not None and self.calls_made >= self.max_requests

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

    def _reserve_call(self) -> bool:
        with self._lock:
            if self.max_requests is not None and self.calls_made >= self.max_requests:
                return False
            self.calls_made += 1
            return True

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0.0, min(self.backoff_max, self.backoff_base * (2.0**attempt)))

    def _call(self, req: GenRequest) -> str:
        types = self._types
        data, mime = image_bytes(req.source.get("image"))
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=types.Schema.model_validate(req.response_schema) if req.response_schema else None,
            temperature=self.temperature,
            seed=req.seed,
        )
        response = self._client.models.generate_content(
            model=self.model,
            contents=[types.Part.from_bytes(data=data, mime_type=mime), req.prompt],
            config=config,
        )
        # ``text`` is None when the answer was blocked or empty: validation rejects "" as malformed_json.
        return response.text or ""

    def _generate_one(self, req: GenRequest) -> GenResult:
        attempts = 0
        kind, detail = "exception", ""
        for attempt in range(self.max_retries + 1):
            if not self._reserve_call():
                logger.warning(
                    "gemini: spend cap of %s API calls reached; request %s left pending",
                    self.max_requests,
                    req.key,
                )
                return GenResult(
                    key=req.key,
                    error="spend_cap",
                    detail=f"max_requests={self.max_requests}",
                    attempts=attempts,
                )
            self._limiter.wait()
            attempts += 1
            try:
                text = self._call(req)
            except Exception as exc:  # classified below; a single request never raises
                kind, retryable = classify_error(exc)
                detail = self._redact(f"{type(exc).__name__}: {exc}")[:500]
                if not retryable or attempt == self.max_retries:
                    logger.warning(
                        "gemini: request %s failed (%s) after %d attempt(s): %s",
                        req.key,
                        kind,
                        attempts,
                        detail,
                    )
                    return GenResult(key=req.key, error=kind, detail=detail, attempts=attempts)
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
            return GenResult(key=req.key, text=text, attempts=attempts)
        return GenResult(key=req.key, error=kind, detail=detail, attempts=attempts)  # unreachable in practice
