"""The console tells the run's story once: no duplicates, no advertisements, progress fit for a file."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

from conftest import ROOT, TEST_OVERRIDES

from medgr2.utils.console import ConsoleFilter, ProgressLines


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _redraw(stream: ProgressLines, clock: Clock, states: list[tuple[float, str]]) -> None:
    for t, text in states:
        clock.t = t
        stream.write("\r" + text)
    stream.write("\n")


def test_a_live_bar_becomes_one_line_per_interval_and_its_final_state():
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines(out, interval_s=30, clock=clock)
    _redraw(lines, clock, [(t, f"sft {t:.0f}/100") for t in range(0, 101, 5)])
    # One state every 30 s of the bar's life, then its final state.
    assert out.getvalue().splitlines() == ["sft 30/100", "sft 60/100", "sft 90/100", "sft 100/100"]


def test_a_short_bar_leaves_only_its_final_line_and_plain_text_passes_through():
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines(out, interval_s=30, clock=clock)
    lines.write("starting\n")
    _redraw(lines, clock, [(0, "evaluate 0/3"), (1, "evaluate 1/3"), (2, "evaluate 3/3   ")])
    lines.write("done\n")
    assert out.getvalue() == "starting\nevaluate 3/3\ndone\n"
    assert lines.isatty() is False


def _record(name: str, msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_the_console_filter_drops_advertisements_and_housekeeping_but_never_errors():
    f = ConsoleFilter()
    assert not f.filter(_record("lightning.pytorch.utilities.rank_zero", "💡 Tip: try installing litlogger"))
    assert not f.filter(_record("lightning.pytorch.utilities.rank_zero", "GPU available: False, used: False"))
    assert not f.filter(_record("py.warnings", "x.py:1: UserWarning: `LeafSpec` is deprecated, use TreeSpec"))
    assert not f.filter(_record("medgr2.config", "config:\nstage: ..."))
    assert f.filter(_record("medgr2.pipeline.loop", "loop: iter0/sft done in 1m02s"))
    assert f.filter(_record("x", "litlogger failed", logging.ERROR))


def test_a_stage_sent_to_a_pipe_prints_each_line_once_and_keeps_the_rest_in_the_log_file(tmp_path, shared_cache):
    over = [o for o in TEST_OVERRIDES if not o.startswith(("trainer.enable_progress_bar", "print_config"))]
    # The session's cache (data, tiny model); 3 steps give a base of its own, so this run pretrains.
    cmd = [sys.executable, str(ROOT / "train.py"), "stage=pretrain", "logger=none", *over,
           "model.pretrain.steps=3", f"paths.root={tmp_path}", f"paths.cache_dir={shared_cache}",
           f"hydra.run.dir={tmp_path / 'job'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A user's shell, not the suite's: importing benchmarks/common.py (collected with the GPU-check test) sets
    # TQDM_DISABLE=1 in this process, which would hide the very bar this test reads.
    env.pop("TQDM_DISABLE", None)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    console = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(console) == len(set(console)), console
    text = "\n".join(console)
    for noise in ("litlogger", "💡", "Epoch 0/", "GPU available", "is deprecated", "Saving the dataset", "\r"):
        assert noise not in text, (noise, text)
    assert any(ln.startswith("pretrain: 100%") and "3/3" in ln for ln in console), text
    assert sum("config" in ln for ln in console) == 1  # the tree is in the log file, one line says where
    log = (tmp_path / "job" / "train.log").read_text()
    assert "GPU available" in log and "── stage" in log  # off the console, not lost
    assert len(console) < 15, text
