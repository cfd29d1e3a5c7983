"""Reliability: the Gemini generator against a loopback fake server that misbehaves.

Cases not in test_generation_gemini.py (which covers one 429 with Retry-After: 0, one 500, one timeout,
persistent 5xx, a 400 and the spend cap): bursts of 429 with a Retry-After (and its cap), a truncated body, a
200 with the wrong content type, a server that hangs on every call, a dead server (connection refused).
Each must end after a bounded number of calls, leave the failed requests pending (nothing lost, nothing kept
wrongly), say so in the summary, and a rerun against a healthy server must complete them.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fake_gemini import LoopbackServer

pytest.importorskip("google.genai")

from generation_fixtures import toy_sources  # noqa: E402

from medgr2.generation import load_generated, plan_requests, run_generation  # noqa: E402
from medgr2.generation._util import image_bytes  # noqa: E402
from medgr2.generation.gemini import GeminiBackend  # noqa: E402

MODEL = "gemini-2.0-flash"
SOURCES = toy_sources(6)
KEY = "AIzaFAKE-reliability-0000"


class Misbehaving(LoopbackServer):
    """generateContent on loopback; ``script`` holds one action per call (then "ok"):
    ``ok``, ``429:<retry-after>``, ``truncated`` (Content-Length larger than the body, then close),
    ``html`` (200 with a text/html body), ``hang`` (sleep ``hang_s`` before answering)."""

    def __init__(self):
        self.script: list[str] = []
        self.calls = 0
        self.hang_s = 2.0
        self.lock = threading.Lock()
        by_image = {image_bytes(s["image"])[0]: s for s in SOURCES}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with fake.lock:
                    fake.calls += 1
                    action = fake.script.pop(0) if fake.script else "ok"
                if action.startswith("429"):
                    retry_after = action.partition(":")[2] or "0"
                    return self._send(429, json.dumps({"error": {"code": 429, "message": "quota",
                                                                  "status": "RESOURCE_EXHAUSTED"}}).encode(),
                                      {"Retry-After": retry_after})
                if action == "html":
                    return self._send(200, b"<html><body>Service Unavailable</body></html>", {},
                                      content_type="text/html")
                if action == "hang":
                    time.sleep(fake.hang_s)
                parts = body["contents"][0]["parts"]
                image = next(p["inlineData"]["data"] for p in parts if "inlineData" in p)
                src = by_image[base64.urlsafe_b64decode(image)]
                item = {k: src[k] for k in ("question_type", "question", "options", "rationale", "answer")}
                reply = json.dumps({"candidates": [{"content": {"role": "model", "parts": [
                    {"text": json.dumps(item)}]}, "finishReason": "STOP"}]}).encode()
                if action == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply[: len(reply) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                return self._send(200, reply, {})

            def _send(self, code, data, headers, content_type="application/json"):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

            def log_message(self, *args):
                pass

        self._start(Handler)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    server = Misbehaving()
    yield server
    server.close()


def _backend(url: str, **kw) -> GeminiBackend:
    args = dict(model=MODEL, base_url=url, max_concurrency=1, requests_per_minute=None, max_retries=2,
                backoff_base=0.01, backoff_max=0.02, timeout_s=5)
    args.update(kw)
    return GeminiBackend(**args)


def _dead_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_burst_of_429_waits_the_retry_after_each_time_then_succeeds(fake):
    fake.script = ["429:2"] * 3
    backend = _backend(fake.url, max_retries=5, backoff_base=100.0, backoff_max=100.0)
    waits: list[float] = []
    backend._sleep = waits.append
    [res] = backend.generate(plan_requests(SOURCES[:1], "direct"))
    assert res.error is None and res.attempts == 4 and fake.calls == 4
    assert waits == [2.0, 2.0, 2.0]  # the server's wait, not the (huge) backoff
    # A Retry-After longer than retry_after_max is capped.
    fake.script = ["429:3600"]
    backend = _backend(fake.url, retry_after_max=1.5)
    waits.clear()
    backend._sleep = waits.append
    [res] = backend.generate(plan_requests(SOURCES[:1], "direct"))
    assert res.error is None and waits == [1.5]


def test_a_429_burst_longer_than_the_retries_leaves_requests_pending_and_a_rerun_finishes(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    fake.script = ["429:0"] * 9  # 3 requests x 3 attempts rate-limited, then the quota is back
    out = tmp_path / "gen"
    first = run_generation(SOURCES, _backend(fake.url), "direct", out, shard_size=3, progress=False)
    assert fake.calls == 9 + 3  # bounded: 3 attempts each for the first shard, then 3 good calls
    assert not first.complete and first.pending == 3 and first.kept == 3
    assert first.api_errors == {"rate_limited": 3}
    assert "3 pending" in caplog.text and "rerun the same command" in caplog.text
    second = run_generation(SOURCES, _backend(fake.url), "direct", out, shard_size=3, progress=False)
    assert second.complete and second.kept == 6 and second.attempted == 3
    assert load_generated(out)["id"] == [r.key for r in plan_requests(SOURCES, "direct")]


@pytest.mark.parametrize("fault", ["truncated", "html", "hang"])
def test_a_transient_bad_response_is_retried(fake, fault):
    fake.script = [fault]
    fake.hang_s = 1.5
    backend = _backend(fake.url, timeout_s=0.5)
    [res] = backend.generate(plan_requests(SOURCES[:1], "direct"))
    assert res.error is None and res.attempts == 2 and fake.calls == 2, res


@pytest.mark.parametrize(("fault", "kind"), [("truncated", "connection"), ("html", "bad_response"),
                                             ("hang", "timeout")])
def test_a_persistent_bad_response_gives_up_after_bounded_attempts_and_nothing_is_lost(fake, tmp_path, fault,
                                                                                        kind):
    fake.script = [fault] * 6
    fake.hang_s = 1.0
    out = tmp_path / "gen"
    t0 = time.perf_counter()
    first = run_generation(SOURCES[:2], _backend(fake.url, timeout_s=0.3), "direct", out, shard_size=2,
                           progress=False)
    assert time.perf_counter() - t0 < 15
    assert fake.calls == 6 and first.pending == 2 and first.kept == 0 and first.api_errors == {kind: 2}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == {"pending_requests": 2, "complete": False, "kept": 0, "rejected": {}}
    second = run_generation(SOURCES[:2], _backend(fake.url), "direct", out, shard_size=2, progress=False)
    assert second.complete and second.kept == 2


def test_a_dead_server_is_a_bounded_connection_error_and_a_rerun_against_a_live_one_completes(fake, tmp_path):
    out = tmp_path / "gen"
    backend = _backend(_dead_url(), max_retries=3)
    t0 = time.perf_counter()
    first = run_generation(SOURCES, backend, "direct", out, shard_size=4, progress=False)
    assert time.perf_counter() - t0 < 10 and backend.calls_made == 6 * 4  # 4 attempts each, no more
    assert first.api_errors == {"connection": 6} and first.pending == 6 and first.kept == 0
    assert not (out / "export").exists()
    second = run_generation(SOURCES, _backend(fake.url), "direct", out, shard_size=4, progress=False)
    assert second.complete and second.kept == 6 and fake.calls == 6
    assert load_generated(out)["id"] == [r.key for r in plan_requests(SOURCES, "direct")]


def test_the_key_is_not_in_any_error_detail(fake, tmp_path):
    fake.script = ["html", "truncated", "hang"] * 3
    fake.hang_s = 1.0
    out = tmp_path / "gen"
    backend = _backend(fake.url, timeout_s=0.3)
    results = backend.generate(plan_requests(SOURCES[:3], "direct"))
    dead = _backend(_dead_url(), max_retries=0).generate(plan_requests(SOURCES[:1], "direct"))
    assert all(r.error for r in results + dead)
    text = repr(results + dead) + "".join(r.detail or "" for r in results + dead)
    assert KEY not in text
    assert not any(KEY.encode() in p.read_bytes() for p in Path(out).rglob("*") if p.is_file())
