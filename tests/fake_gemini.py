"""Loopback stand-ins for Gemini's ``generateContent`` endpoint, shared by the generation and reliability tests.

The real ``google-genai`` client talks to these over HTTP (``generator.base_url=<url>``); nothing is mocked
inside the client.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# One valid candidate, as the structured-output schema asks for it.
ITEM: dict[str, Any] = {"question_type": "Modality Recognition", "question": "Which modality produced this image?",
                        "options": ["CT", "MRI"], "rationale": "Cross-sectional attenuation pattern.", "answer": "A"}


def reply_body(item: dict[str, Any]) -> bytes:
    """A ``generateContent`` response whose one candidate's text is ``item`` as JSON."""
    reply = {"candidates": [{"content": {"role": "model", "parts": [{"text": json.dumps(item)}]},
                             "finishReason": "STOP"}]}
    return json.dumps(reply).encode()


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str, threading.Thread]:
    """Start ``handler`` on a free loopback port in a daemon thread; returns (server, base URL, thread)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_port}", thread


class LoopbackServer:
    """Base of the fake servers: ``_start(handler)`` serves it (``server``, ``url``, ``thread``); ``close()``."""

    def _start(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server, self.url, self.thread = serve(handler)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OneItemGemini(LoopbackServer):
    """Always answers ``item``; records the API keys it was sent (``keys``)."""

    def __init__(self, item: dict[str, Any] | None = None):
        self.keys: list[str | None] = []
        body = reply_body(item or ITEM)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                self.rfile.read(int(self.headers.get("content-length", 0)))
                fake.keys.append(self.headers.get("x-goog-api-key"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._start(Handler)


# ------------------------------------------------------------------------------------------------------
# Every shape the Gemini API answers with, as the REST API writes it (camelCase JSON; error bodies are
# google.rpc.Status with ErrorInfo / RetryInfo details).

MODEL = "gemini-2.0-flash"
PATH = re.compile(r"^/v1(beta)?/models/(?P<model>[^/:]+):generateContent$")
USAGE = {"promptTokenCount": 300, "candidatesTokenCount": 80, "totalTokenCount": 380}


def _status(code: int, status: str, message: str, details: list | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


#: Error answers: action -> (HTTP code, JSON body, extra headers).
ERRORS: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = {
    "429": (429, _status(429, "RESOURCE_EXHAUSTED", "quota"), {"Retry-After": "0"}),
    "429_retryinfo": (429, _status(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                         "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}]), {}),
    "500": (500, _status(500, "INTERNAL", "boom"), {}),
    "503": (503, _status(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), {}),
    "501": (501, _status(501, "NOT_IMPLEMENTED", "Method not implemented."), {}),
    "400": (400, _status(400, "INVALID_ARGUMENT", "bad"), {}),
    "400_payload": (400, _status(400, "INVALID_ARGUMENT", "Request payload size exceeds the limit: 20971520 bytes."),
                    {}),
    "403_leaked": (403, _status(403, "PERMISSION_DENIED",
                                "Your API key was reported as leaked. Please use another API key."), {}),
    "400_key": (400, _status(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
         "message": "API key not valid. Please pass a valid API key."}]), {}),
    "401": (401, _status(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), {}),
}

_BLOCKED_RATINGS = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]


def answer_body(action: str, text: str) -> dict[str, Any]:
    """The 200 body of ``action`` for an answer ``text`` (the item JSON)."""
    usage = dict(USAGE)
    if action == "block_prompt":
        return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _BLOCKED_RATINGS}, "usageMetadata": usage}
    if action == "prohibited_prompt":
        return {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": usage}
    if action in ("block_answer", "prohibited_answer"):
        finish = "SAFETY" if action == "block_answer" else "PROHIBITED_CONTENT"
        return {"candidates": [{"finishReason": finish, "index": 0, "safetyRatings": _BLOCKED_RATINGS}],
                "usageMetadata": usage}
    if action == "max_tokens_empty":  # a thinking model that spent the whole budget thinking
        usage.update(candidatesTokenCount=0, thoughtsTokenCount=1024)
        return {"candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
                "usageMetadata": usage}
    finish, parts = "STOP", [{"text": text}]
    if action == "max_tokens_text":
        finish, parts = "MAX_TOKENS", [{"text": text[: len(text) // 2]}]
    elif action == "recitation":
        finish, parts = "RECITATION", [{"text": text[: len(text) // 3]}]
    elif action == "thought":
        # The thought holds a decoy JSON object: it must never be taken as the answer.
        decoy = json.dumps({"question_type": "Modality Recognition", "question": "decoy?", "options": ["X", "Y"],
                            "rationale": "thinking", "answer": "B"})
        parts = [{"text": f"Let me draft it first: {decoy}", "thought": True}, {"text": text}]
        usage["thoughtsTokenCount"] = 200
    elif action == "fenced":
        parts = [{"text": f"```json\n{text}\n```"}]
    elif action == "empty":
        parts = []
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage}


class ScriptedGemini(LoopbackServer):
    """A scripted ``generateContent`` endpoint.

    ``script`` holds one action per call (then ``default``, "ok" unless changed): an error of :data:`ERRORS`,
    an answer shape of :func:`answer_body` ("ok", "block_prompt", "block_answer", "prohibited_prompt",
    "prohibited_answer", "recitation", "max_tokens_empty", "max_tokens_text", "thought", "fenced", "empty"), or
    "sleep" (``sleep_s`` before an "ok"). Answers are the item of the source whose image was sent (``sources``),
    passed through ``text_for``; an image it does not know gets :data:`ITEM`. Records calls, paths, bodies, keys.
    """

    def __init__(self, sources: Sequence[Mapping[str, Any]] = (), model: str = MODEL):
        from medgr2.generation._util import image_bytes

        self.script: list[str] = []
        self.default = "ok"
        self.calls = 0
        self.paths: list[str] = []
        self.bodies: list[dict] = []
        self.keys: list[str | None] = []
        self.sleep_s = 1.0
        self.by_image = {image_bytes(s["image"])[0]: s for s in sources}
        self.text_for: Callable[[Mapping[str, Any] | None], str] = item_text
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with fake.lock:
                    fake.calls += 1
                    fake.paths.append(self.path)
                    fake.bodies.append(body)
                    fake.keys.append(self.headers.get("x-goog-api-key"))
                    action = fake.script.pop(0) if fake.script else fake.default
                m = PATH.match(self.path)
                if not m or m.group("model") != model:
                    return self._send(404, _status(404, "NOT_FOUND", f"models/{m and m.group('model')} is not found"))
                if action in ERRORS:
                    code, obj, headers = ERRORS[action]
                    return self._send(code, obj, headers)
                if action == "sleep":
                    time.sleep(fake.sleep_s)  # longer than the client's timeout
                parts = body["contents"][0]["parts"]
                image = next(p["inlineData"]["data"] for p in parts if "inlineData" in p)
                # The SDK sends inline bytes url-safe base64 encoded.
                src = fake.by_image.get(base64.urlsafe_b64decode(image))
                self._send(200, answer_body(action, fake.text_for(src)))

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args):
                pass

        self._start(Handler)


def item_text(src: Mapping[str, Any] | None, answer: str | None = None) -> str:
    """The JSON item a perfect generator writes for ``src`` (:data:`ITEM` when ``src`` is None)."""
    if src is None:
        return json.dumps(ITEM)
    keys = ("question_type", "question", "options", "rationale")
    return json.dumps({**{k: src[k] for k in keys}, "answer": answer or src["answer"]})
