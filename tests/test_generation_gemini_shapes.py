"""Every answer shape of the Gemini API through the real google-genai client against the loopback fake:
blocked and cut answers rejected by reason, thoughts never taken as the answer, retryable / final / fatal
errors, the rejects file, token accounting and the token budget, and the options that reach the API."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from fake_gemini import MODEL, USAGE, ScriptedGemini

pytest.importorskip("google.genai")

from generation_fixtures import toy_sources  # noqa: E402

from medgr2.generation import load_generated, plan_requests, run_generation  # noqa: E402
from medgr2.generation.gemini import GeminiBackend  # noqa: E402
from medgr2.generation.rejects import modality_table, read_rows  # noqa: E402
from medgr2.generation.run import GenerationStopped  # noqa: E402
from medgr2.pipeline.generate import cost_estimate  # noqa: E402

SECRET = "AIzaTEST-shapes-key-0b9a71"
SOURCES = toy_sources(6)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    server = ScriptedGemini(SOURCES, MODEL)
    yield server
    server.close()


def _backend(fake, **kw) -> GeminiBackend:
    args = dict(model=MODEL, base_url=fake.url, max_concurrency=1, requests_per_minute=None, max_retries=2,
                backoff_base=0.01, backoff_max=0.02, timeout_s=5)
    return GeminiBackend(**{**args, **kw})


def _run(fake, out: Path, **kw):
    backend_kw = {k: kw.pop(k) for k in list(kw) if k not in ("retry_failed", "shard_size")}
    return run_generation(SOURCES, _backend(fake, **backend_kw), "direct", out, progress=False,
                          shard_size=kw.pop("shard_size", 4), **kw)


@pytest.mark.parametrize(
    ("action", "reason", "says"),
    [
        ("block_prompt", "safety", "promptFeedback.blockReason=SAFETY"),
        ("prohibited_prompt", "prohibited_content", "blockReason=PROHIBITED_CONTENT"),
        ("block_answer", "safety", "finishReason=SAFETY"),
        ("prohibited_answer", "prohibited_content", "finishReason=PROHIBITED_CONTENT"),
        ("recitation", "recitation", "finishReason=RECITATION"),
        ("max_tokens_empty", "max_tokens", "raise generator.max_output_tokens or lower generator.thinking_budget"),
        ("max_tokens_text", "max_tokens", "cut off at the output budget"),
        ("empty", "empty", "no answer text"),
    ],
)
def test_an_unusable_answer_is_rejected_with_its_reason_once_and_never_kept(fake, action, reason, says):
    fake.script = [action]
    [res] = _backend(fake).generate(plan_requests(SOURCES[:1], "direct"))
    assert res.text is None and res.error is None and res.reason == reason and says in res.detail
    assert res.attempts == 1 and fake.calls == 1  # a blocked answer is an answer: not retried, not pending
    assert res.usage["prompt"] == USAGE["promptTokenCount"]


def test_thought_parts_are_never_the_answer_and_fenced_json_is_read(fake, tmp_path):
    fake.script = ["thought", "fenced", "thought"]
    summary = _run(fake, tmp_path / "gen")
    assert summary.complete and summary.kept == 6 and not summary.rejected
    ds = load_generated(tmp_path / "gen")
    assert "decoy?" not in ds["question"]  # the JSON inside the thought part was not taken
    assert ds["question"] == [s["question"] for s in SOURCES]
    assert summary.usage["thoughts"] == 400 and summary.usage["prompt"] == 6 * USAGE["promptTokenCount"]


def test_a_429_with_retryinfo_waits_the_delay_the_body_asks_for(fake):
    fake.script = ["429_retryinfo"]
    backend = _backend(fake, backoff_base=100.0, backoff_max=100.0)
    waits: list[float] = []
    backend._sleep = waits.append  # the wait itself is not the subject: record it instead of sleeping 2 s
    [res] = backend.generate(plan_requests(SOURCES[:1], "direct"))
    assert res.text and res.attempts == 2 and waits == [2.0]  # RetryInfo.retryDelay "2s", not the backoff


def test_a_503_that_never_ends_stays_pending_and_a_rerun_against_a_healthy_api_completes(fake, tmp_path):
    fake.default = "503"
    first = _run(fake, tmp_path / "gen")
    assert first.pending == 6 and not first.failed and first.api_errors == {"server_error": 6}
    assert fake.calls == 18  # 3 attempts each (max_retries=2): bounded
    fake.default = "ok"
    second = _run(fake, tmp_path / "gen")
    assert second.complete and second.kept == 6 and fake.calls == 24


def test_a_permanent_400_fails_for_good_the_run_completes_and_a_rerun_does_not_resend_it(fake, tmp_path):
    out = tmp_path / "gen"
    fake.script = ["ok", "400_payload", "501"]
    first = _run(fake, out)
    assert first.complete and first.kept == 4 and first.pending == 0
    assert first.failed == Counter({"http_400": 1, "http_501": 1}) and fake.calls == 6  # never retried
    assert len(load_generated(out, require_complete=True)) == 4
    rows = read_rows(out / "rejects.jsonl")
    assert [(r["source_id"], r["reason"], r["kind"]) for r in rows] == [
        (SOURCES[1]["id"], "http_400", "failed"), (SOURCES[2]["id"], "http_501", "failed")]
    assert "payload size exceeds the limit" in rows[0]["detail"]

    again = _run(fake, out)  # the same command: nothing to do, the failed requests are not paid again
    assert again.complete and again.attempted == 0 and fake.calls == 6 and again.failed == first.failed
    resent = _run(fake, out, retry_failed=True)  # explicitly asked: exactly the two failed ones are resent
    assert resent.attempted == 2 and fake.calls == 8 and resent.kept == 6 and not resent.failed
    assert read_rows(out / "rejects.jsonl") == []
    assert load_generated(out)["id"] == [r.key for r in plan_requests(SOURCES, "direct")]


@pytest.mark.parametrize("answer", ["403_leaked", "400_key", "401"])
def test_a_refused_key_stops_at_the_first_answer_naming_the_variable_not_the_key(fake, tmp_path, answer):
    fake.default = answer
    out = tmp_path / "gen"
    with pytest.raises(GenerationStopped) as info:
        _run(fake, out, max_concurrency=2)
    message = str(info.value)
    assert "API key" in message and "GEMINI_API_KEY" in message and SECRET not in message
    assert "\n" not in message and "nothing lost" in message
    assert fake.calls <= 2  # the requests already in flight at most, never one per request
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"]["pending_requests"] == 6 and not read_rows(out / "rejects.jsonl")
    fake.default = "ok"  # fixed key: the same command resumes and completes
    assert _run(fake, out).kept == 6


def test_the_rejects_file_and_its_per_modality_summary(fake, tmp_path):
    out = tmp_path / "gen"
    fake.text_for = lambda src: '{"question": "cut' if src["id"] == SOURCES[5]["id"] else json.dumps(
        {k: src[k] for k in ("question_type", "question", "options", "rationale", "answer")})
    fake.script = ["block_prompt", "ok", "max_tokens_empty", "400_payload", "block_answer"]
    summary = _run(fake, out)
    assert summary.complete and summary.kept == 1
    rows = read_rows(out / "rejects.jsonl")
    assert [set(r) for r in rows] == [{"id", "source_id", "modality", "question_type", "reason", "kind", "detail"}] * 5
    got = [(r["source_id"], r["modality"], r["reason"], r["kind"]) for r in rows]
    expected_reasons = [("safety", "rejected"), ("max_tokens", "rejected"), ("http_400", "failed"),
                        ("safety", "rejected"), ("malformed_json", "rejected")]
    assert got == [(s["id"], s["modality"], *why) for s, why in zip(
        [SOURCES[i] for i in (0, 2, 3, 4, 5)], expected_reasons, strict=True)]
    by_mod = summary.rejects_by_modality
    assert sum(sum(c.values()) for c in by_mod.values()) == 5 and by_mod[SOURCES[0]["modality"]] == {"safety": 1}
    table = modality_table(by_mod, summary.requested_by_modality)
    assert table.splitlines()[0].split() == ["modality", "requested", "rejected", "share", "http_400",
                                             "malformed_json", "max_tokens", "safety"]
    assert summary.rejected == Counter({"safety": 2, "max_tokens": 1, "malformed_json": 1})


def test_tokens_are_summed_and_the_token_budget_stops_calls(fake, tmp_path):
    per_call = USAGE["promptTokenCount"] + USAGE["candidatesTokenCount"]
    summary = _run(fake, tmp_path / "gen", max_tokens_budget=2 * per_call)
    assert summary.pending == 4 and summary.kept == 2 and fake.calls == 2  # 2 answers reach the budget
    assert summary.usage == Counter({"prompt": 600, "candidates": 160, "thoughts": 0})
    assert summary.api_errors["spend_cap"] >= 1
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert manifest["usage"] == {"prompt": 600, "candidates": 160, "thoughts": 0}  # summed over resumes
    # Thought tokens are billed as output.
    assert cost_estimate({"prompt": 1e6, "candidates": 5e5, "thoughts": 5e5}, {"input": 0.1, "output": 0.4}) == \
        pytest.approx(0.5)
    assert cost_estimate(summary.usage, None) is None


def test_safety_settings_thinking_budget_and_output_budget_reach_the_api(fake):
    backend = _backend(fake, thinking_budget=0, max_output_tokens=512,
                       safety_settings={"HARM_CATEGORY_DANGEROUS_CONTENT": "BLOCK_ONLY_HIGH"})
    backend.generate(plan_requests(SOURCES[:1], "direct"))
    body = fake.bodies[0]
    assert body["safetySettings"] == [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_ONLY_HIGH"}]
    # google-genai 3.x writes this one nested field in snake_case; the API's proto-JSON parser takes both spellings.
    assert body["generationConfig"]["thinkingConfig"] in ({"thinkingBudget": 0}, {"thinking_budget": 0})
    assert body["generationConfig"]["maxOutputTokens"] == 512
    assert backend.fingerprint()["thinking_budget"] == 0  # they change answers: a different pool
    with pytest.raises(ValueError, match="unknown threshold 'BLOCK_SOME'"):
        _backend(fake, safety_settings={"HARM_CATEGORY_DANGEROUS_CONTENT": "BLOCK_SOME"})


def test_an_unknown_model_stops_at_the_first_answer_and_says_which_setting_to_fix(fake, tmp_path):
    with pytest.raises(GenerationStopped, match=r"generator.model='gemini-nope'.*404 NOT_FOUND.*fix generator.model"):
        _run(fake, tmp_path / "gen", model="gemini-nope")
    assert fake.calls == 1
