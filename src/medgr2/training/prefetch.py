"""Run a batch producer one step ahead in a second thread, where that pays (R_φ scoring on an accelerator)."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch


def prefetch_default(device: torch.device) -> bool:
    """Whether :meth:`RewardScorer.score` collates in a second thread by default: on an accelerator, with 2+ cores.

    There the forward waits on the device with the GIL released, so collating the next batch meanwhile is free.
    On CPU it is off: torch's intra-op threads already claim the cores (``cpu_threads``), and a small model's
    forward of many short kernels holds the GIL much of the time. Measured on the tiny VLM with one torch thread
    on two busy cores, a collation thread made scoring slower, not faster (benchmarks/scoring.py).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return device.type != "cpu" and cores >= 2


_DONE = object()


def prefetched(source: Iterator[Any], torch_threads: int, depth: int = 2) -> Iterator[Any]:
    """``source``'s values, produced ``depth`` ahead in a daemon thread; its exceptions re-raised here.

    Worth it when the caller's thread spends its time waiting with the GIL released (on an accelerator, for the
    device) and a core is free for this one; see :func:`prefetch_default`. Closing the generator (the consumer
    stopped early or raised) stops the producer at its next batch.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        torch.set_num_threads(torch_threads)  # the caller's setting; a new thread would start from the default
        try:
            for value in source:
                while not stop.is_set():
                    try:
                        q.put((True, value), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, _DONE))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put((False, err))

    worker = threading.Thread(target=produce, name="reward-collate", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = q.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)
