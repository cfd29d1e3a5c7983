"""`python train.py stage=generate generator=gemini ...` — the real command line, the real google-genai client,
the loopback fake: a refused key ends the command non-zero at the first answer, and a request the API rejects
for good (400) neither blocks the pool nor is paid for again by the rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from conftest import ROOT, TEST_OVERRIDES
from fake_gemini import ScriptedGemini

from medgr2.pipeline import run

pytest.importorskip("google.genai")

SECRET = "AIzaTEST-cli-key-4d2e8f"


def _generate(tmp_path: Path, cache: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "GEMINI_API_KEY": SECRET}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, str(ROOT / "train.py"), *TEST_OVERRIDES, f"paths.cache_dir={cache}", "stage=generate",
           "generator=gemini", f"generator.base_url={url}", "generator.requests_per_minute=null",
           "generator.backoff_base=0.01", "generator.backoff_max=0.02", "stage.n_sources=6", "stage.shard_size=4",
           f"stage.out_dir={tmp_path / 'gen'}", "logger=none", "stage.progress=false", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def fake():
    server = ScriptedGemini()  # SynthMed images are not its toy sources: every "ok" answers the generic ITEM
    yield server
    server.close()


def test_a_leaked_key_exits_non_zero_at_the_first_answer_with_one_line_naming_the_variable(fake, tmp_path,
                                                                                           shared_cache):
    fake.default = "403_leaked"
    proc = _generate(tmp_path, shared_cache, fake.url)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "refused the API key" in errors[0] and "reported as leaked" in errors[0]
    assert "GEMINI_API_KEY" in errors[0] and SECRET not in proc.stdout + proc.stderr
    assert 1 <= fake.calls <= 4  # the default max_concurrency: the calls in flight, not one per request
    assert "Traceback" not in proc.stderr


def test_a_permanent_400_completes_the_stage_and_the_rerun_does_not_pay_for_it_again(fake, tmp_path, shared_cache,
                                                                                     make_cfg, monkeypatch):
    fake.script = ["ok", "400_payload", "block_prompt", "max_tokens_empty"]
    one = ("generator.max_concurrency=1",)  # one request at a time: the script meets the requests in plan order
    first = _generate(tmp_path, shared_cache, fake.url, *one)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "gen"
    export = out / "export" / "candidates"
    assert len(datasets.load_from_disk(str(export))) == 3 and fake.calls == 6  # exported, not blocked
    assert "failed for good 1 {'http_400': 1}" in first.stdout and "retry_failed=true" in first.stdout
    assert "rejected and failed requests by modality" in first.stdout
    assert "tokens this run: prompt 1500, candidates 320, thoughts 1024 in 6 API call(s)" in first.stdout
    rows = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["kind"]) for r in rows] == [("http_400", "failed"), ("safety", "rejected"),
                                                       ("max_tokens", "rejected")]
    assert all(r["source_id"] and r["modality"] and r["question_type"] for r in rows)

    again = _generate(tmp_path, shared_cache, fake.url, *one)  # the same command
    assert again.returncode == 0 and fake.calls == 6, again.stderr[-3000:]  # nothing resent, stage complete

    # generator.retry_failed=true resends exactly the failed one (in-process: the same stage, without another
    # ~20 s interpreter start); its metrics are what MLflow gets.
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    m = run(make_cfg("stage=generate", "generator=gemini", f"generator.base_url={fake.url}", *one,
                     "generator.requests_per_minute=null", "generator.retry_failed=true", "stage.n_sources=6",
                     "stage.shard_size=4", f"stage.out_dir={out}", "logger=none", "stage.progress=false"))
    assert fake.calls == 7 and m["generate/attempted"] == 1 and m["generate/failed"] == 0
    assert m["generate/kept"] == 4 and len(datasets.load_from_disk(str(export))) == 4
    assert m["generate/tokens/prompt"] == 300 and m["generate/cost_usd"] > 0
    assert m["generate/rejected/safety"] == 1 and sum(v for k, v in m.items() if k.startswith("generate/rejects/")) == 2
