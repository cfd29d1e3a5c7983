"""Crash-safe file output: nothing half-written ever takes the place of a good file or folder.

:func:`atomic_dir` writes a folder next to its target and renames it into place. A writer killed before the
rename (SIGKILL, OOM, a lost node) cannot clean up after itself, so its temporary folder would stay behind
for ever; the next write of the same target removes such leftovers (:func:`remove_stale_siblings`), but only
those whose writer is provably gone: the folder's name carries its writer's host, PID namespace, PID and
process start time, and a writer that is still running (or whose liveness cannot be told from here) is
never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: A temporary folder whose writer's liveness cannot be checked from here (another host on a shared file
#: system, another PID namespace, or a name from before writers were named) is taken as abandoned only when
#: nothing in it changed for this long. Writes take minutes; a day leaves a wide margin.
STALE_AFTER_S = 24 * 3600.0


def _proc_start(pid: int) -> int:
    """Start time of process ``pid`` in clock ticks since boot (Linux), 0 when unknown.

    With the PID it identifies one process for good: a PID reused by a later process has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # Field 2 (the command) may hold spaces and parentheses: count fields after its closing parenthesis.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return 0


def _proc_state(pid: int) -> str:
    """proc(5) state letter of ``pid`` (``Z`` for a zombie), ``""`` when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    rest = stat[stat.rfind(")") + 2:]
    return rest[:1]


def _host_tag() -> str:
    """This host and PID namespace, as one file-name-safe word: PIDs only mean something within it."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    try:
        ns = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))  # "pid:[4026531836]"
    except OSError:
        ns = ""
    return f"{host}{ns}" if ns else host


def _owner_tag() -> str:
    """``<host+pidns>-<pid>-<start time>``: who is writing (see :func:`_writer_alive`)."""
    pid = os.getpid()
    return f"{_host_tag()}-{pid}-{_proc_start(pid)}"


def _writer_alive(pid: int, start: int) -> bool:
    """True unless process ``pid`` (started at ``start``, 0 = unknown) is known to be gone on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    except OSError:  # pragma: no cover - cannot tell: assume alive
        return True
    if _proc_state(pid) == "Z":  # killed, not yet reaped by its parent: it writes nothing any more
        return False
    if start:
        now = _proc_start(pid)
        if now and now != start:  # the PID was reused by a later process: the writer is gone
            return False
    return True


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` or anything under it (a writer may only touch deep files)."""
    newest = path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _sibling_pattern(name: str, kind: str) -> re.Pattern[str]:
    # ".<name>.<kind>-<host>-<pid>-<start>-<random>" (this module's names), or ".<name>.<kind>-<8 random>"
    # (mkdtemp names of earlier versions, whose writer is unknown). Anchored, and the host word has no dots
    # or dashes, so the leftovers of a target called "<name>.tmp-x" never match the target "<name>".
    return re.compile(rf"^\.{re.escape(name)}\.{kind}-(?:(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-(?P<start>\d+)-"
                      r"[A-Za-z0-9_]+|[a-z0-9_]{8}|(?P<oldpid>\d+))$")


def _abandoned(entry: Path, m: re.Match[str], stale_after: float, now: float) -> bool:
    """Whether the writer that named ``entry`` (matched by :func:`_sibling_pattern`) is gone."""
    if m.group("host") is not None and m.group("host") == _host_tag():
        return not _writer_alive(int(m.group("pid")), int(m.group("start")))
    # Another host or PID namespace, or a name without a writer: only age can tell.
    try:
        return now - _newest_mtime(entry) > stale_after
    except OSError:  # vanished meanwhile (its writer renamed it, or another cleaner removed it)
        return False


def remove_stale_siblings(path: str | Path, stale_after: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary folders that killed :func:`atomic_dir` writers of ``path`` left next to it.

    Removed: ``.<name>.tmp-*`` folders of ``path`` whose writer is gone (same host and PID namespace: its PID
    is dead, a zombie, or now another process with another start time; otherwise: nothing in the folder
    changed for ``stale_after`` seconds), and ``.<name>.old-*`` folders (the previous version, set aside
    during the rename) of such writers **only while ``path`` exists**: without it, that folder is the last
    good version, and is left in place with a warning. A live writer's folders are never touched, so
    concurrent writers of one target are safe. Returns what was removed.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(f".{path.name}.")]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        for kind in ("tmp", "old"):
            m = _sibling_pattern(path.name, kind).match(entry.name)
            if m is None:
                continue
            if not _abandoned(Path(entry.path), m, stale_after, now):
                break
            if kind == "old" and not path.exists():
                log.warning("%s is missing, but %s holds its previous version (a writer was killed between its two "
                            "renames); left in place", path, entry.path)
                break
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(Path(entry.path))
                log.info("removed %s, left behind by a killed writer of %s", entry.path, path)
            break
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    A crash inside the block leaves ``path`` as it was (absent or the previous good version) and the
    temporary folder is removed. A writer killed outright cannot remove it; the next ``atomic_dir`` of the
    same ``path`` does (:func:`remove_stale_siblings`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    owner = _owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{owner}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            # A fresh name per write: two writers of one target in one process must not share it.
            old = path.with_name(f".{path.name}.old-{owner}-{secrets.token_hex(4)}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON-dump ``obj`` to ``path`` atomically (sorted keys, indented)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def exclusive_lock(folder: str | Path, what: str = "writing") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``.<folder name>.lock`` beside ``folder`` (POSIX ``flock``) for the block.

    For folders with one writer at a time (a generation run's shards and manifest): a second process that
    wants the same folder waits, saying so once, and then finds the first one's finished work. The lock goes
    with the process, so a killed writer never leaves it held.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Beside the folder, not in it: the folder's contents stay exactly what its writer put there.
    with open(folder.parent / f".{folder.name}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is %s %s; waiting for it to finish", what, folder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
