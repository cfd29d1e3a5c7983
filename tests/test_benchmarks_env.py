"""The benchmark environment (one thread, no tqdm, offline) applies to benchmark processes only."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_benchmarks_common_leaves_another_process_environment_alone() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", "import os, benchmarks.common; print(os.environ.get('TQDM_DISABLE'), os.environ.get('OMP_NUM_THREADS'))"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out == ["None", "None"]


def test_a_module_run_from_benchmarks_counts_as_a_benchmark_process(monkeypatch) -> None:
    from benchmarks import common

    fake = types.ModuleType("__main__")
    fake.__spec__ = types.SimpleNamespace(name="benchmarks.run_all")
    monkeypatch.setitem(sys.modules, "__main__", fake)
    assert common._benchmark_process()
    fake.__spec__ = types.SimpleNamespace(name="pytest")
    assert not common._benchmark_process()
