"""GeminiBackend with the real google-genai client against a loopback fake Gemini server."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_gemini import PATH, ScriptedGemini, item_text
from generation_fixtures import toy_sources

from medgr2.data.schema import LETTERS, index_of
from medgr2.generation import load_generated, plan_requests, run_generation
from medgr2.generation.gemini import GeminiBackend, MissingAPIKeyError, retry_after_seconds

SECRET = "AIzaTEST-not-a-real-key-5f3c9e"
MODEL = "gemini-2.0-flash"
SOURCES = toy_sources(6)
_PATH = PATH


def _item(src: dict, answer: str | None = None) -> str:
    return item_text(src, answer)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    server = ScriptedGemini(SOURCES, MODEL)  # tests/fake_gemini.py: every wire shape, scripted
    yield server
    server.close()


def _backend(fake, **kw) -> GeminiBackend:
    args = dict(
        model=MODEL,
        base_url=fake.url,
        max_concurrency=2,
        requests_per_minute=None,
        max_retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
        timeout_s=5,
    )
    args.update(kw)
    return GeminiBackend(**args)


def _requests(n=None, strategy="metacognitive"):
    return plan_requests(SOURCES[:n] if n else SOURCES, strategy)


def test_good_response_and_what_is_sent(fake):
    backend = _backend(fake)
    results = backend.generate(_requests(3))
    assert [r.error for r in results] == [None] * 3 and fake.calls == 3
    assert all(json.loads(r.text)["question"] for r in results)
    assert all(_PATH.match(p) for p in fake.paths)
    assert fake.keys == [SECRET] * 3  # the key travels in the header, nowhere else
    cfg = fake.bodies[0]["generationConfig"]
    assert cfg["responseMimeType"] == "application/json"
    schema_text = json.dumps(cfg["responseSchema"])
    assert "reflection" in schema_text and "rationale" in schema_text
    parts = fake.bodies[0]["contents"][0]["parts"]
    assert (
        parts[0]["inlineData"]["mime_type" if "mime_type" in parts[0]["inlineData"] else "mimeType"]
        == "image/png"
    )
    assert "question type" in parts[1]["text"]


@pytest.mark.parametrize("first", ["429", "500", "sleep"])
def test_transient_failure_is_retried(fake, first):
    fake.script = [first]
    fake.sleep_s = 1.0
    backend = _backend(fake, max_concurrency=1, timeout_s=0.4)
    t0 = time.perf_counter()
    [res] = backend.generate(_requests(1))
    assert res.error is None and res.attempts == 2 and fake.calls == 2
    assert time.perf_counter() - t0 < 3


def test_retry_after_header_is_read(fake):
    fake.script = ["429"]
    backend = _backend(fake, max_retries=0)
    waits = []
    backend._sleep = waits.append
    [res] = backend.generate(_requests(1))
    assert res.error == "rate_limited" and res.attempts == 1

    class Exc(Exception):
        details = {
            "error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}
        }

    assert retry_after_seconds(Exc()) == 7.0
    fake.script = ["429"]
    backend = _backend(fake, max_retries=1, backoff_base=100.0, backoff_max=100.0)
    backend._sleep = waits.append
    [res] = backend.generate(_requests(1))
    assert res.error is None and waits == [0.0]  # Retry-After: 0 wins over the 100 s backoff


def test_persistent_5xx_gives_up_and_4xx_is_not_retried(fake):
    fake.script = ["500"] * 10
    [res] = _backend(fake, max_retries=2, max_concurrency=1).generate(_requests(1))
    assert res.error == "server_error" and res.attempts == 3 and fake.calls == 3
    fake.script = ["400"]
    [res] = _backend(fake, max_concurrency=1).generate(_requests(1))
    assert res.error == "http_400" and res.final and res.attempts == 1 and fake.calls == 4


def test_spend_cap_stops_calls(fake):
    backend = _backend(fake, max_concurrency=1, max_requests=3)
    results = backend.generate(_requests(5))
    assert [r.error for r in results] == [None, None, None, "spend_cap", "spend_cap"]
    assert fake.calls == 3 and backend.spend_cap_reached
    # Retries count against the cap too.
    fake.script = ["500", "500"]
    backend = _backend(fake, max_concurrency=1, max_requests=2)
    [res] = backend.generate(_requests(1))
    assert res.error == "spend_cap" and fake.calls == 5


def test_run_generation_nothing_lost_nothing_wrongly_kept(fake, tmp_path: Path):
    # Source 1 answers with malformed JSON, source 2 with a letter outside its options, the rest are good;
    # transient 429/500 errors are sprinkled in and retried.
    bad_json, bad_letter = SOURCES[1]["id"], SOURCES[2]["id"]

    def text_for(src):
        if src["id"] == bad_json:
            return '{"question": "Is it'
        if src["id"] == bad_letter:
            return _item(src, answer=LETTERS[len(src["options"])])
        return _item(src)

    fake.text_for = text_for
    fake.script = ["429", "500", "ok", "429"]
    summary = run_generation(
        SOURCES, _backend(fake), "direct", tmp_path / "gen", shard_size=4, progress=False
    )
    assert summary.complete and summary.requested == 6 and summary.kept == 4
    assert summary.rejected == Counter({"malformed_json": 1, "answer_not_in_options": 1})
    ds = load_generated(tmp_path / "gen")
    kept_sources = [json.loads(p)["source_id"] for p in ds["provenance"]]
    assert kept_sources == [s["id"] for s in SOURCES if s["id"] not in (bad_json, bad_letter)]
    for row, sid in zip(ds, kept_sources, strict=True):
        src = next(s for s in SOURCES if s["id"] == sid)
        assert row["answer_text"] == src["options"][index_of(src["answer"])]


def test_spend_cap_leaves_requests_pending_and_a_rerun_finishes(fake, tmp_path: Path):
    out = tmp_path / "gen"
    first = run_generation(
        SOURCES,
        _backend(fake, max_requests=4, max_concurrency=1),
        "direct",
        out,
        shard_size=4,
        progress=False,
    )
    assert not first.complete and first.kept == 4 and first.pending == 2
    assert first.api_errors["spend_cap"] >= 1 and fake.calls == 4
    manifest = json.loads((out / "manifest.json").read_text())
    pending = [k for e in manifest["shards"].values() for k in e["pending"]]
    assert len(pending) == 2
    # A larger cap is an operational change, not a new configuration: the rerun resumes.
    second = run_generation(
        SOURCES, _backend(fake, max_requests=10), "direct", out, shard_size=4, progress=False
    )
    assert second.complete and second.kept == 6 and second.attempted == 2 and fake.calls == 6
    ids = load_generated(out)["id"]
    assert ids == [r.key for r in plan_requests(SOURCES, "direct")]


def test_api_key_never_leaks(fake, tmp_path: Path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    fake.script = ["429", "500", "400", "500", "500", "500", "500"]
    backend = _backend(fake, max_retries=2)
    summary = run_generation(SOURCES, backend, "metacognitive", tmp_path / "gen", shard_size=3, progress=True)
    results = backend.generate(_requests(2))
    assert set(fake.keys) == {SECRET}  # it was used...
    ds = load_generated(tmp_path / "gen")
    manifest = (tmp_path / "gen" / "manifest.json").read_text()
    captured = capsys.readouterr()
    haystacks = {
        "logs": caplog.text,
        "stdout/stderr": captured.out + captured.err,
        "provenance": "\n".join(ds["provenance"]),
        "manifest": manifest,
        "summary": json.dumps(summary.to_dict()) + repr(summary),
        "repr": repr(backend) + str(backend),
        "results": repr(results),
    }
    assert summary.api_errors  # errors were logged and recorded...
    for where, text in haystacks.items():
        assert SECRET not in text, f"API key leaked into {where}"  # ...without the key


def test_missing_key_names_the_env_var(monkeypatch):
    monkeypatch.delenv("MEDGR2_TEST_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="MEDGR2_TEST_KEY"):
        GeminiBackend(api_key_env="MEDGR2_TEST_KEY")
