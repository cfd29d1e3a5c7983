"""The real command line: `python train.py ...` with DDP on 2 CPU processes, inspect on OmniMedVQA layouts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TEST_OVERRIDES
from fixtures_omnimedvqa import write_medr1_fixture, write_omnimedvqa_fixture


def train_py(tmp_path, cache, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    # SynthMed's size keys do not exist in other data configs.
    sizes = [o for o in TEST_OVERRIDES if not (o.startswith("data.") and "data=omnimedvqa" in args)]
    cmd = [sys.executable, str(ROOT / "train.py"), *sizes, f"paths.cache_dir={cache}", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_ddp_sft_runs_with_two_cpu_processes(tmp_path, shared_cache):
    proc = train_py(tmp_path, shared_cache, "stage=sft", "trainer=ddp", "logger=none", "stage.max_steps=3",
                    "stage.train_size=32", "stage.batch_size=4", "stage.val_every=3", "stage.val_size=8",
                    "evaluate.limit=8")
    log = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log
    assert "world_size=2" in log.replace(" ", "") or "Starting with 2 processes" in log or "2 processes" in log
    exports = list(tmp_path.glob("outputs/sft/*/policy/model.safetensors"))
    assert len(exports) == 1


def test_inspect_reports_counts_and_skips_on_the_raw_omnimedvqa_fixture(tmp_path, shared_cache):
    data = tmp_path / "omni"
    expected = write_omnimedvqa_fixture(data)
    proc = train_py(tmp_path, shared_cache, "stage=inspect", "data=omnimedvqa", f"data.root={data}", "logger=none")
    out = proc.stdout
    assert "missing_image" in out and "answer_not_in_options" in out and "malformed_json" in out
    assert str(expected["n_records"]) in out


def test_inspect_works_on_the_medr1_split_layout(tmp_path, shared_cache):
    data = tmp_path / "medr1"
    write_medr1_fixture(data)
    proc = train_py(tmp_path, shared_cache, "stage=inspect", "data=omnimedvqa", f"data.root={data}", "logger=none")
    assert "Modality" in proc.stdout or "modality" in proc.stdout


def test_omnimedvqa_without_a_root_fails_with_a_clear_message(tmp_path, shared_cache):
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path)}
    cmd = [sys.executable, str(ROOT / "train.py"), "stage=inspect", "data=omnimedvqa", "logger=none",
           "print_config=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "data.root" in proc.stderr


@pytest.mark.parametrize("flag", ["--help"])
def test_help_lists_the_config_groups(flag, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), flag], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0
    for group in ("stage:", "data:", "model:", "trainer:", "logger:"):
        assert group in proc.stdout
