"""Crash-safe output (medgr2.utils.io): a killed atomic_dir writer's leftovers are removed by the next write of
the same target, and only when their writer is gone — never a live (concurrent) writer's folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medgr2.utils import io as mio
from medgr2.utils.io import atomic_dir, remove_stale_siblings

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A writer in its own process: enters atomic_dir, writes a file, says so, then waits for a line on stdin
# (or for a SIGKILL) before leaving the block.
WRITER = textwrap.dedent("""
    import sys
    from medgr2.utils.io import atomic_dir
    with atomic_dir(sys.argv[1]) as tmp:
        (tmp / "payload.txt").write_text(sys.argv[2])
        print(tmp, flush=True)
        sys.stdin.readline()
""")


def start_writer(target: Path, text: str) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), text], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_dir() and tmp.parent == target.parent, tmp
    return proc, tmp


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def test_a_sigkilled_writers_temp_folder_is_removed_by_the_next_write(tmp_path) -> None:
    target = tmp_path / "model"
    proc, tmp = start_writer(target, "killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp.is_dir() and not target.exists()  # what a killed writer leaves behind
    assert tmp.name.startswith(".model.tmp-") and f"-{proc.pid}-" in tmp.name  # its writer is in its name
    with atomic_dir(target) as out:
        (out / "payload.txt").write_text("good")
    assert (target / "payload.txt").read_text() == "good"
    assert leftovers(target) == []


def test_a_killed_but_unreaped_writer_counts_as_gone(tmp_path) -> None:
    target = tmp_path / "model"
    proc, tmp = start_writer(target, "zombie")
    proc.send_signal(signal.SIGKILL)
    deadline = time.time() + 10
    while mio._proc_state(proc.pid) != "Z" and time.time() < deadline:  # killed, parent has not waited yet
        time.sleep(0.01)
    assert mio._proc_state(proc.pid) == "Z"
    assert remove_stale_siblings(target) == [tmp]
    proc.wait()


def test_a_live_concurrent_writers_temp_folder_is_left_alone(tmp_path) -> None:
    target = tmp_path / "model"
    proc, tmp = start_writer(target, "second")
    try:
        with atomic_dir(target) as out:  # this process writes the same target meanwhile
            (out / "payload.txt").write_text("first")
        assert tmp.is_dir() and (tmp / "payload.txt").read_text() == "second"
        assert remove_stale_siblings(target) == []
    finally:
        proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0
    assert (target / "payload.txt").read_text() == "second"  # the live writer finished its rename: last wins
    assert leftovers(target) == []


def test_a_reused_pid_does_not_keep_a_dead_writers_folder(tmp_path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    pid = os.getpid()  # alive, but "started" at another time: the PID was reused, the writer is gone
    start = mio._proc_start(pid)
    if not start:
        pytest.skip("no /proc start times here")
    stale = tmp_path / f".model.tmp-{mio._host_tag()}-{pid}-{start + 1}-abcd1234"
    mine = tmp_path / f".model.tmp-{mio._host_tag()}-{pid}-{start}-abcd1234"
    stale.mkdir()
    mine.mkdir()
    assert remove_stale_siblings(target) == [stale]
    assert mine.is_dir()


def test_unknown_writers_are_judged_by_age_and_other_targets_are_never_touched(tmp_path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    old, recent = time.time() - 2 * mio.STALE_AFTER_S, time.time()
    names = {
        ".model.tmp-otherhost123-4242-99-abcd1234": old,  # another host: cannot check its PID; old
        ".model.tmp-otherhost123-4243-99-abcd1234": recent,  # another host, recently written: maybe alive
        ".model.tmp-k3j_x9q2": old,  # an earlier version's mkdtemp name: old
        ".model.old-4244": old,  # an earlier version's set-aside previous version: old, and model exists
        ".model.tmp-x.tmp-otherhost123-1-1-abcd1234": old,  # belongs to a target named "model.tmp-x"
        ".modelx.tmp-k3j_x9q2": old,  # belongs to "modelx"
    }
    for name, mtime in names.items():
        d = tmp_path / name
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f").write_text("x")
        for p in (d / "sub" / "f", d / "sub", d):
            os.utime(p, (mtime, mtime))
    removed = {p.name for p in remove_stale_siblings(target)}
    assert removed == {".model.tmp-otherhost123-4242-99-abcd1234", ".model.tmp-k3j_x9q2", ".model.old-4244"}
    # A deep change counts as activity: a writer may only be touching files far below the folder.
    d = tmp_path / ".model.tmp-otherhost123-4245-99-abcd1234"
    (d / "a" / "b").mkdir(parents=True)
    for p in (d / "a" / "b", d / "a", d):
        os.utime(p, (old, old))
    (d / "a" / "b" / "new.bin").write_text("being written")
    assert remove_stale_siblings(target) == []


def test_a_set_aside_previous_version_is_kept_while_the_target_is_missing(tmp_path, caplog) -> None:
    target = tmp_path / "model"
    prev = tmp_path / f".model.old-{mio._host_tag()}-999999999-1-abcd1234"  # a dead writer's, mid-rename
    prev.mkdir()
    (prev / "payload.txt").write_text("previous good version")
    assert remove_stale_siblings(target) == [] and prev.is_dir()
    assert "previous version" in caplog.text
    target.mkdir()  # once the target exists again, the set-aside copy is redundant
    assert remove_stale_siblings(target) == [prev]


def test_atomic_dir_still_replaces_and_rolls_back(tmp_path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as t:
        (t / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as t:
        (t / "v").write_text("2")
        raise RuntimeError("crash inside the block")
    assert (target / "v").read_text() == "1" and leftovers(target) == []
    with atomic_dir(target) as t:
        (t / "v").write_text("3")
    assert (target / "v").read_text() == "3" and leftovers(target) == []
