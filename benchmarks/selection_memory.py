"""Peak memory of streaming selection vs. loading the pool (issue 4: TopK from 200k scored candidates < 1 GB).

Builds synthetic scored pools of 10k, 50k and 200k candidates (id, score, question, options, rationale,
image path — realistic row sizes without real images) as Parquet shards (what ``stage=generate`` writes)
and as a ``save_to_disk`` folder (what ``stage=score`` writes), then runs each selection in a FRESH
subprocess so that ``ru_maxrss`` (the peak resident set) belongs to that selection alone:

* ``import``      — the floor: python + pyarrow + datasets + numpy imported, nothing read;
* ``topk``        — :func:`medgr2.data.selection.select` TopK, k=2000 (Parquet pool);
* ``topk_dedupe`` — TopK with ``allow_overlap=False`` (image + question read and hashed, still O(k));
* ``randk``       — RandK, k=2000;
* ``topk_arrow``  — TopK on the ``save_to_disk`` folder (memory-mapped Arrow);
* ``naive``       — the baseline: the whole pool into pandas, ``sort_values``, ``head(k)``.

Usage: ``python benchmarks/selection_memory.py [--sizes 10000 50000 200000] [--k 2000]``. Prints a table and
writes ``benchmarks/results/selection_memory.json``. Not a timed test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "selection_memory.json"
SHARD_ROWS = 10_000
METHODS = ("import", "topk", "topk_dedupe", "randk", "topk_arrow", "naive")
WORDS = ("lesion organ modality image left right small large liver lung kidney brain ct mri x-ray ultrasound "
         "finding visible shows region contrast margin density shape benign malignant grade").split()


def build_pool(n: int, folder: Path, seed: int = 0) -> None:
    """``n`` synthetic scored candidates as Parquet shards in ``folder/parquet`` and a ``save_to_disk``
    copy in ``folder/arrow`` (built shard by shard, so building does not need the pool in memory either)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    pdir = folder / "parquet"
    pdir.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, SHARD_ROWS):
        m = min(SHARD_ROWS, n - start)
        ids = [f"gen-{i:08d}" for i in range(start, start + m)]
        table = pa.table({
            "id": ids,
            "image": [f"images/synth-{i % (n // 2 or 1):08d}.png" for i in range(start, start + m)],
            "question": [" ".join(rng.choices(WORDS, k=10)).capitalize() + "?" for _ in range(m)],
            "options": [[w.upper() for w in rng.sample(WORDS, 4)] for _ in range(m)],
            "answer": [rng.choice("ABCD") for _ in range(m)],
            "rationale": [" ".join(rng.choices(WORDS, k=40)) + "." for _ in range(m)],
            "provenance": [json.dumps({"backend": "simulated", "seed": seed, "n": i}) for i in range(start, start + m)],
            "score": pa.array([rng.uniform(-6.0, 10.0) for _ in range(m)], pa.float32()),
        })
        pq.write_table(table, pdir / f"shard-{start // SHARD_ROWS:05d}.parquet")
    files = sorted(str(p) for p in pdir.glob("*.parquet"))
    ds = datasets.Dataset.from_parquet(files, cache_dir=str(folder / "hf_cache"))
    ds.save_to_disk(str(folder / "arrow"))


def worker(method: str, folder: Path, k: int) -> dict:
    """Run one selection in this (fresh) process and report its peak RSS."""
    import datasets  # noqa: F401  (same imports in every worker: the floor is comparable)
    import numpy  # noqa: F401
    import pandas as pd
    import pyarrow  # noqa: F401

    from medgr2.data.selection import select

    t0 = time.perf_counter()
    files = sorted((folder / "parquet").glob("*.parquet"))
    ids: list[str] = []
    if method == "topk":
        ids = select(files, "topk", k=k).ids
    elif method == "topk_dedupe":
        ids = select(files, "topk", k=k, allow_overlap=False).ids
    elif method == "randk":
        ids = select(files, "randk", k=k, seed=0).ids
    elif method == "topk_arrow":
        ids = select(str(folder / "arrow"), "topk", k=k).ids
    elif method == "naive":
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        ids = df.sort_values(["score", "id"], ascending=[False, True]).head(k)["id"].tolist()
    elif method != "import":
        raise ValueError(method)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"method": method, "peak_mb": peak_kb / 1024, "vm_hwm_mb": vm_hwm_kb() / 1024, "seconds": seconds,
            "n_selected": len(ids), "ids_head": ids[:5], "ids_hash": hash_ids(ids)}


def vm_hwm_kb() -> float:
    """The kernel's per-address-space peak RSS (reset by exec, unlike ru_maxrss): a cross-check."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def hash_ids(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]


def _child(*args: str) -> str:
    # Everything heavy runs in children and this process stays small: Linux carries ru_maxrss across
    # fork+exec, so a child would otherwise report the parent's peak (e.g. from building a pool).
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def run_worker(method: str, folder: Path, k: int) -> dict:
    return json.loads(_child("--worker", method, "--pool", str(folder), "--k", str(k)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--k", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=None, help="where pools are built (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.pool, args.k)))
        return
    if args.build:
        build_pool(args.build, args.pool)
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="medgr2-selbench-"))
    rows = []
    for n in args.sizes:
        folder = work / f"pool-{n}"
        if not (folder / "arrow").exists():
            t = time.perf_counter()
            _child("--build", str(n), "--pool", str(folder))
            print(f"built pool of {n:,} in {time.perf_counter() - t:.1f}s at {folder}", file=sys.stderr)
        res = {m: run_worker(m, folder, args.k) for m in METHODS}
        # The streaming TopK must pick exactly what sorting everything picks (same tie rule).
        agree = res["topk"]["ids_hash"] == res["naive"]["ids_hash"] == res["topk_arrow"]["ids_hash"]
        rows.append({"n": n, "k": args.k, "topk_matches_naive": agree,
                     **{m: {kk: r[kk] for kk in ("peak_mb", "vm_hwm_mb", "seconds", "n_selected")} for m, r in res.items()}})

    base = rows[0]
    header = (f"{'pool':>8} | {'import':>7} | {'topk':>7} | {'topk+dedupe':>11} | {'randk':>7} | {'topk(arrow)':>11} | "
              f"{'naive':>8} | {'naive/topk':>10} | {'topk vs 10k':>11} | topk s | naive s | same ids")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['n']:>8,} | {r['import']['peak_mb']:>7.0f} | {r['topk']['peak_mb']:>7.0f} | "
            f"{r['topk_dedupe']['peak_mb']:>11.0f} | {r['randk']['peak_mb']:>7.0f} | {r['topk_arrow']['peak_mb']:>11.0f} | "
            f"{r['naive']['peak_mb']:>8.0f} | {r['naive']['peak_mb'] / r['topk']['peak_mb']:>9.2f}x | "
            f"{r['topk']['peak_mb'] / base['topk']['peak_mb']:>10.2f}x | {r['topk']['seconds']:>6.2f} | "
            f"{r['naive']['seconds']:>7.2f} | {r['topk_matches_naive']}"
        )
    table = "\n".join(lines)
    print(f"peak RSS in MB (ru_maxrss of a fresh process per cell), k={args.k}\n{table}")
    hwm = "; ".join(f"{r['n']:,}: topk {r['topk']['vm_hwm_mb']:.0f} / naive {r['naive']['vm_hwm_mb']:.0f}" for r in rows)
    print(f"cross-check, VmHWM in MB: {hwm}")
    largest = rows[-1]
    verdict = {
        "topk_largest_under_1gb": largest["topk"]["peak_mb"] < 1024,
        "topk_flat_within_20pct": largest["topk"]["peak_mb"] <= 1.2 * base["topk"]["peak_mb"],
    }
    print(json.dumps(verdict))
    results = args.out / RESULTS.name if args.out else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"rows": rows, "verdict": verdict, "table": table, "python": sys.version.split()[0],
                                   "platform": platform.platform(), "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
