"""Resumable generation: shards, manifest, pending retries, config fingerprint, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from generation_fixtures import toy_sources

from medgr2.data.schema import FEATURES
from medgr2.generation import (
    GenerationConfigError,
    GenResult,
    SimulatedBackend,
    load_generated,
    plan_requests,
    run_generation,
)

SOURCES = toy_sources(30, seed=1)


def _rows(ds):
    return ds.data.table.to_pylist()  # raw rows: encoded image bytes compared byte for byte


class Flaky:
    """Wraps a backend and fails the given request keys with a server error (as if retries ran out)."""

    def __init__(self, inner, fail_keys):
        self.inner, self.fail_keys = inner, set(fail_keys)
        self.name, self.model = inner.name, inner.model
        self.batch_size = 8

    def fingerprint(self):
        return self.inner.fingerprint()

    def generate(self, requests):
        ok = self.inner.generate([r for r in requests if r.key not in self.fail_keys])
        by_key = {r.key: r for r in ok}
        return [by_key.get(r.key) or GenResult(key=r.key, error="server_error", attempts=6) for r in requests]


def test_shards_manifest_and_load(tmp_path: Path):
    out = tmp_path / "gen"
    summary = run_generation(
        SOURCES,
        SimulatedBackend(seed=2),
        "step_by_step",
        out,
        samples_per_source=2,
        shard_size=16,
        progress=False,
    )
    assert summary.complete and summary.requested == 60 and summary.shards == 4 == summary.shards_written
    assert summary.kept + sum(summary.rejected.values()) == 60
    assert set(summary.rejected) <= {"malformed_json", "missing_field"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["shards"], key=int) == ["0", "1", "2", "3"]
    assert sum(e["kept"] for e in manifest["shards"].values()) == summary.kept
    rejects = [e["rejects_file"] for e in manifest["shards"].values() if e["rejects_file"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "rejects.jsonl"] + [e["file"] for e in manifest["shards"].values()] + rejects
    )
    ds = load_generated(out)
    assert ds.features == FEATURES and len(ds) == summary.kept
    plan = [r.key for r in plan_requests(SOURCES, "step_by_step", samples_per_source=2)]
    assert ds["id"] == [k for k in plan if k in set(ds["id"])]  # plan order
    assert sum(summary.kept_defects.values()) == sum(1 for p in ds["provenance"] if "defect" in json.loads(p))
    # A rerun does nothing.
    again = run_generation(
        SOURCES,
        SimulatedBackend(seed=2),
        "step_by_step",
        out,
        samples_per_source=2,
        shard_size=16,
        progress=False,
    )
    assert again.attempted == 0 and again.shards_skipped == 4 and again.kept == summary.kept


def test_config_mismatch_is_refused(tmp_path: Path):
    out = tmp_path / "gen"
    run_generation(SOURCES[:5], SimulatedBackend(seed=2), "direct", out, progress=False)
    with pytest.raises(GenerationConfigError, match="new out_dir") as err:
        run_generation(SOURCES[:5], SimulatedBackend(seed=2), "direct", out, seed=1, progress=False)
    assert "seed" in str(err.value)
    with pytest.raises(GenerationConfigError, match="backend"):
        run_generation(SOURCES[:5], SimulatedBackend(seed=3), "direct", out, progress=False)


def test_failed_requests_are_pending_and_retried(tmp_path: Path):
    plan = plan_requests(SOURCES, "metacognitive")
    fail = {plan[i].key for i in (0, 3, 25, 29)}
    out = tmp_path / "resumed"
    first = run_generation(
        SOURCES,
        Flaky(SimulatedBackend(seed=4).with_pool(SOURCES), fail),
        "metacognitive",
        out,
        shard_size=10,
        progress=False,
    )
    assert not first.complete and first.pending == 4 and first.api_errors == {"server_error": 4}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k for e in manifest["shards"].values() for k in e["pending"]} == fail
    assert not fail & set(load_generated(out)["id"])
    second = run_generation(
        SOURCES, SimulatedBackend(seed=4), "metacognitive", out, shard_size=10, progress=False
    )
    assert second.complete and second.attempted == 4 and second.shards_skipped == 1
    reference = tmp_path / "reference"
    ref = run_generation(
        SOURCES, SimulatedBackend(seed=4), "metacognitive", reference, shard_size=10, progress=False
    )
    assert (second.kept, second.rejected) == (ref.kept, ref.rejected)
    assert _rows(load_generated(out)) == _rows(load_generated(reference))
    # Older shard revisions were cleaned up.
    assert len(list(out.glob("shard-*.parquet"))) == 3


_CHILD = """
import sys
from medgr2.generation import SimulatedBackend, run_generation
from generation_fixtures import toy_sources
run_generation(toy_sources(30, seed=1), SimulatedBackend(seed=6, latency_s=float(sys.argv[2])), "step_by_step",
               sys.argv[1], samples_per_source=2, shard_size=10, progress=False)
"""


def test_kill_and_resume_equals_uninterrupted_run(tmp_path: Path):
    killed = tmp_path / "killed"
    here = Path(__file__).resolve().parent  # the child imports the test helpers beside this file
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(killed), "0.04"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    manifest = killed / "manifest.json"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and json.loads(manifest.read_text())["shards"]:
                break
            time.sleep(0.02)
        assert proc.poll() is None, (
            f"child ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    done = json.loads(manifest.read_text())["shards"]
    assert 1 <= len(done) < 6  # interrupted mid-run

    resumed = run_generation(
        SOURCES,
        SimulatedBackend(seed=6),
        "step_by_step",
        killed,
        samples_per_source=2,
        shard_size=10,
        progress=False,
    )
    assert resumed.complete and resumed.shards_skipped == len(done)
    uninterrupted = tmp_path / "uninterrupted"
    run_generation(
        SOURCES,
        SimulatedBackend(seed=6),
        "step_by_step",
        uninterrupted,
        samples_per_source=2,
        shard_size=10,
        progress=False,
    )
    a, b = load_generated(killed), load_generated(uninterrupted)
    assert a["id"] == b["id"] and len(a) > 0
    assert _rows(a) == _rows(b)
    assert not list(killed.glob(".*tmp*"))  # leftovers of the killed process were cleaned up


def _generate_into(out: str, started: str) -> int:
    """One process's generation run (module level so a spawned process can import it)."""
    Path(started).touch()
    summary = run_generation(SOURCES, SimulatedBackend(seed=2), "step_by_step", out, samples_per_source=2,
                             shard_size=4, progress=False)
    return summary.requested


def test_two_processes_generating_into_one_folder_both_finish_with_one_complete_pool(tmp_path: Path):
    # Parallel sweep jobs that need the same uncached pool: without the folder lock the second writer's manifest
    # commit deleted the first one's temporary shard files (FileNotFoundError, seen in a 3-job sweep).
    import multiprocessing as mp

    out = tmp_path / "gen"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        done = pool.starmap(_generate_into, [(str(out), str(tmp_path / f"s{i}")) for i in range(2)])
    assert done == [len(SOURCES) * 2] * 2
    alone = tmp_path / "alone"
    run_generation(SOURCES, SimulatedBackend(seed=2), "step_by_step", alone, samples_per_source=2, shard_size=4,
                   progress=False)
    assert _rows(load_generated(out, require_complete=True)) == _rows(load_generated(alone, require_complete=True))
    assert not list(out.glob(".*.tmp-*"))
