"""Shared benchmark machinery: one-thread setup, the tiny VLM, SynthMed records, interleaved timing, tables, JSON.

Method (docs/field-facts.md, "How speed is judged"): both sides run in ONE process on the same machine, same tiny VLM, same inputs and
settings, **interleaved** (A, B, A, B, ...) so that load from other jobs on a shared machine hits both sides
alike; the figures are medians and the ratio of medians (ours ÷ peer). Absolute seconds are noise here.

Every benchmark pins torch to one thread (``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``), records
``os.getloadavg()`` at its start and end, and writes ``benchmarks/results/<name>.json`` with the machine.
"""

from __future__ import annotations

import os
import sys


def _benchmark_process() -> bool:
    """True when this process was started as a benchmark (``python -m benchmarks.x`` or ``benchmarks/x.py``).

    The environment below is right for a benchmark process but must not leak into another process that merely
    imports this module (the test suite imports ``benchmarks.gpu_check``; a ``TQDM_DISABLE=1`` set here once hid
    the progress bar a console test reads).
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", "") or ""
    path = getattr(main, "__file__", "") or ""
    return name.startswith("benchmarks.") or (bool(path) and os.path.dirname(os.path.abspath(path)) == os.path.dirname(__file__))


# Before torch is imported anywhere: one OpenMP/MKL thread per process (and per Python thread: OpenMP's
# thread count is per thread, and the interleaver runs loops in threads).
if _benchmark_process():
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import datetime as _dt  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CACHE = ROOT / ".cache" / "medgr2"
CACHE_ENV = "MEDGR2_BENCH_CACHE"  # where the tiny model is built/loaded (default: the project's cache, as `make demo`)
THREADS = 1


def one_thread() -> None:
    """torch on one intra-op (and inter-op) thread, in the calling Python thread."""
    import torch

    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(THREADS)
    except RuntimeError:  # already set (or parallel work already ran): harmless
        pass


def quiet() -> None:
    """Silence the libraries' per-step chatter (it is not what we measure)."""
    warnings.filterwarnings("ignore")
    import lightning  # noqa: F401  (Lightning sets its loggers' levels on import: import first, then lower them)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "trl", "accelerate",
                 "datasets", "medgr2", "httpx", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers always present here
        pass


# ----------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "transformers", "lightning", "trl", "accelerate", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "nproc": affinity,
            "cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "versions": versions()}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _status_kb(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux >= 4.0), so that a later
    :func:`vm_hwm_mb` is the peak of what ran in between, not of the imports before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm_mb() -> float:
    return _status_kb("VmHWM") / 1024


def vm_rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


# ----------------------------------------------------------------------------------------------- model, data


def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or str(DEFAULT_CACHE)


def tiny_model_path(cache: str | None = None) -> str:
    """The tiny Qwen2.5-VL's ``from_pretrained`` folder (built into the cache once, like every stage does)."""
    return _tiny_model_path(cache or cache_dir())


@functools.lru_cache(maxsize=4)
def _tiny_model_path(cache: str) -> str:
    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import ModelSpec, resolve_model_path

    return resolve_model_path(ModelSpec.from_config(tiny_spec_base(cache)), tokenizer_corpus)


def tiny_spec_base(cache: str | None = None) -> dict[str, Any]:
    """``conf/model/tiny_vlm.yaml`` as a dict (its ``tiny`` block is :class:`TinyVLMSpec`'s defaults)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny_vlm.yaml"))
    cfg.pop("pretrain", None)
    cfg["cache_dir"] = str(cache or cache_dir())
    return cfg


def tiny_spec(cache: str | None = None) -> dict[str, Any]:
    """The model spec every side loads: the tiny VLM, untrained (random init from its seed), float32, SDPA.

    ``path`` points at the built folder, so loading skips re-hashing the tokenizer corpus.
    """
    cache = cache or cache_dir()
    return {**tiny_spec_base(cache), "path": tiny_model_path(cache)}


def records(n: int, split: str = "train", start: int = 0) -> list[dict[str, Any]]:
    """``n`` SynthMed VQA records (PIL images in memory), deterministic."""
    from medgr2.data.synthmed import SynthMedConfig, make_item

    cfg = SynthMedConfig()
    return [make_item(cfg, split, i) for i in range(start, start + n)]


def length_reward(records: Sequence[Mapping[str, Any]], completions: Sequence[str]):
    """A cheap dense reward (shorter is better), so that advantages are not all zero with an untrained model."""
    import torch

    return torch.tensor([-len(c) / 64.0 for c in completions])


# ----------------------------------------------------------------------------------------------- timing


class Interleaver:
    """Run several training loops in lock-step: one step of A, one of B, one of A, ...

    Each arm is a function ``arm(hook)`` that runs its own loop (a Lightning ``fit``, TRL's ``train``, a bare
    loop) and calls ``hook()`` at the end of every step (from a callback). Arms run in their own Python
    threads, but only the one holding the turn runs: ``hook`` records the wall time since the arm got the
    turn (so a step's time covers the loop's whole per-step work: fetching the batch, hooks, the step,
    logging), passes the turn to the next live arm and waits for its next turn. Time outside an arm's
    turn (setup before its first hook counts as its step 0) is nobody's. Steps are numbered from 0; drop
    warm-up steps when summarising.
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.times: dict[str, list[float]] = {n: [] for n in self.names}
        self._cv = threading.Condition()
        self._turn = self.names[0]
        self._live = set(self.names)
        self._start: dict[str, float] = {}
        self._errors: dict[str, BaseException] = {}

    def _next(self, me: str) -> str | None:
        i = self.names.index(me)
        for k in range(1, len(self.names) + 1):
            cand = self.names[(i + k) % len(self.names)]
            if cand in self._live:
                return cand
        return None

    def _wait_turn(self, me: str) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._turn == me)
        self._start[me] = time.perf_counter()

    def hook_for(self, me: str) -> Callable[[], None]:
        def hook() -> None:
            self.times[me].append(time.perf_counter() - self._start[me])
            with self._cv:
                self._turn = self._next(me) or me
                self._cv.notify_all()
            self._wait_turn(me)

        return hook

    def _run_arm(self, me: str, arm: Callable[[Callable[[], None]], Any]) -> None:
        one_thread()
        try:
            self._wait_turn(me)
            arm(self.hook_for(me))
        except BaseException as err:  # noqa: BLE001 - reported by run()
            self._errors[me] = err
        finally:
            with self._cv:
                self._live.discard(me)
                nxt = self._next(me)
                if nxt is not None:
                    self._turn = nxt
                self._cv.notify_all()

    def run(self, arms: Mapping[str, Callable[[Callable[[], None]], Any]]) -> dict[str, list[float]]:
        threads = [threading.Thread(target=self._run_arm, args=(n, arms[n]), name=f"arm-{n}", daemon=True)
                   for n in self.names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._errors:
            name, err = next(iter(self._errors.items()))
            raise RuntimeError(f"benchmark arm {name!r} failed: {err!r}") from err
        return self.times


def interleave_calls(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     setup: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Call each function once per round, in order, ``warmup + repeats`` rounds; wall times of the last ``repeats``.

    ``setup(round)`` runs (untimed) before each round, e.g. to seed the RNG so both sides sample alike.
    """
    times: dict[str, list[float]] = {n: [] for n in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            if setup is not None:
                setup(r)
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and count of a list of seconds."""
    xs = sorted(samples)
    if not xs:
        return {"n": 0, "median": float("nan"), "p25": float("nan"), "p75": float("nan"), "min": float("nan")}
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"n": len(xs), "median": statistics.median(xs), "p25": q[0], "p75": q[2], "min": xs[0]}


def ms(x: float) -> str:
    return f"{1000 * x:.1f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


class Run:
    """One benchmark's bookkeeping: load average at start/end, machine, JSON output next to the others."""

    def __init__(self, name: str, out_dir: str | Path | None = None, config: Mapping[str, Any] | None = None):
        one_thread()
        quiet()
        self.name = name
        self.out_dir = Path(out_dir) if out_dir else RESULTS
        self.config = dict(config or {})
        self.load_start = loadavg()
        self.t0 = time.perf_counter()

    def finish(self, payload: Mapping[str, Any], table: str) -> dict[str, Any]:
        load_end = loadavg()
        result = {"benchmark": self.name, "config": self.config, **payload, "table": table,
                  "loadavg_start": self.load_start, "loadavg_end": load_end,
                  "wall_s": round(time.perf_counter() - self.t0, 2), "machine": machine()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.name}.json"
        path.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
        m = result["machine"]
        print(f"\n## {self.name}\n\n{table}\n\n{m['date']} · {m['cpu_model']} · nproc {m['nproc']} · "
              f"torch threads {m['torch_threads']} · load {self.load_start} -> {load_end} · "
              f"{result['wall_s']} s · wrote {path}", flush=True)
        return result


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def lightning_trainer(max_steps: int, callbacks: Sequence[Any] = ()):
    """A plain CPU Lightning Trainer: no logger, no checkpoints, no progress bar (what we time is the step)."""
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, callbacks=list(callbacks))


def step_hook_callback(hook: Callable[[], None]):
    """A Lightning callback that calls ``hook()`` at the end of every training batch."""
    import lightning as L

    class _Hook(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            hook()

    return _Hook()


def compose(*overrides: str, cache: str | None = None, root: str | Path | None = None):
    """The project's real composed Hydra config (``conf/train.yaml``) with the tiny model from the cache.

    ``root`` (outputs, MLflow) defaults to a temporary folder: benchmarks write nothing into the project.
    """
    import tempfile

    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    import medgr2  # noqa: F401  (registers resolvers)

    root = Path(root or tempfile.mkdtemp(prefix="medgr2-bench-"))
    cache = cache or cache_dir()
    over = [f"paths.root={root}", f"paths.cache_dir={cache}", f"paths.output_dir={root / 'out'}",
            f"model.path={tiny_model_path(cache)}", "logger=none", "print_config=false",
            "cpu_threads=1", *overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = _compose(config_name="train", overrides=over)
    with open_dict(cfg):
        OmegaConf.resolve(cfg)
    return cfg
