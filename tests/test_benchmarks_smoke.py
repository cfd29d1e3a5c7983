"""The benchmark scripts run end to end at a minimal size (``benchmarks/``, ``make bench``).

A check that the scripts work and write their JSON and tables — not a measurement: no timing is asserted.
TRL is a benchmark-only extra (``.[bench]``): where it is not installed, the GRPO benchmark must still run
(our arms only) and say so.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name -> the quick arguments run_all uses (the single source of the minimal sizes)
QUICK_NAMES = ["grpo_vs_trl", "rollouts", "scoring", "sft_step", "grpo_scaling", "grpo_profile"]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, shared_cache):
    """Every in-process benchmark once at its quick size; their JSON results by name.

    The benchmarks quiet library loggers and warnings and pin threads for their own process; here they share
    the test process, so logger levels, warning filters and the environment are restored afterwards.
    """
    env = dict(os.environ)  # before the import: benchmarks.common sets its thread variables on import
    import torch

    from benchmarks import common, run_all

    out = tmp_path_factory.mktemp("bench")
    os.environ[common.CACHE_ENV] = str(shared_cache)  # the test session's tiny model, not the project's cache
    levels = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    threads = torch.get_num_threads()
    results = {}
    try:
        with warnings.catch_warnings():
            for name in QUICK_NAMES:
                mod = __import__(f"benchmarks.{name}", fromlist=["main"])
                mod.main([*run_all.QUICK[name], "--out", str(out)])
                results[name] = json.loads((out / f"{name}.json").read_text())
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name in list(logging.Logger.manager.loggerDict):
            if name not in levels and isinstance(logging.Logger.manager.loggerDict[name], logging.Logger):
                logging.getLogger(name).setLevel(logging.NOTSET)
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
    assert common.THREADS == 1
    return results


@pytest.mark.parametrize("name", QUICK_NAMES)
def test_each_benchmark_writes_its_table_and_machine(quick_results, name):
    r = quick_results[name]
    assert r["benchmark"] == name
    assert r["table"].startswith("|") and "---" in r["table"]
    assert r["machine"]["torch_threads"] == 1 and r["machine"]["nproc"] >= 1
    assert len(r["loadavg_start"]) == 3 and len(r["loadavg_end"]) == 3


def test_the_benchmarks_compare_both_sides(quick_results):
    trl = quick_results["grpo_vs_trl"]
    res = trl["results"][0]
    assert res["ours"]["median"] > 0 and res["ours_repeat"]["median"] > 0
    if trl["trl"]["available"]:
        assert res["trl"]["median"] > 0 and res["ratio_ours_over_trl"] > 0
        assert res["trl"]["saw_pixel_values"]  # TRL really ran its VLM path with the images
    else:
        assert "TRL could not be imported" in trl["table"]
    roll = quick_results["rollouts"]["results"][0]
    assert {"expand", "repeat", "bare"} <= set(roll) and roll["ratio_expand_over_bare"] > 0
    score = quick_results["scoring"]["results"]
    assert score["max_abs_score_diff"] < 1e-4  # ours and the bare forward compute the same scores
    assert quick_results["sft_step"]["results"]["ratio_ours_over_bare"] > 0
    grid = quick_results["grpo_scaling"]["grid"]
    assert len(grid) == 2 and all(c["median"] > 0 for c in grid)
    prof = quick_results["grpo_profile"]["sections_median_s"]
    assert prof["generate"] > 0 and prof["backward"] > 0 and prof["step"] > 0


def test_the_summary_has_every_table_and_the_targets(quick_results):
    from benchmarks import run_all

    text = run_all.summary(quick_results, [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], 1.0)
    assert "torch threads per process: 1" in text and "load average" in text
    for name in QUICK_NAMES:
        assert run_all.TITLES[name] in text
    assert "SFT step ≥ 0.9× bare loop" in text and "rollouts ≥ 0.9× bare generate" in text


@pytest.mark.slow
def test_run_all_runs_the_selection_memory_benchmark_into_its_out_folder(tmp_path):
    """run_all's subprocess path, on the one benchmark that is its own script (fresh processes per cell)."""
    p = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--quick", "--only", "selection_memory",
                        "--out", str(tmp_path)], cwd=str(ROOT), capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "selection_memory.json").read_text())
    assert [row["n"] for row in r["rows"]] == [200] and all(row["topk_matches_naive"] for row in r["rows"])
    assert "Selection peak memory" in (tmp_path / "SUMMARY.md").read_text()
