"""Loopback stand-ins for Gemini's ``generateContent`` endpoint, shared by the generation and reliability tests.

The real ``google-genai`` client talks to these over HTTP (``generator.base_url=<url>``); nothing is mocked
inside the client.
"""

from __future__ import annotations

import json
import threading
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
