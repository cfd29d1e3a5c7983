"""Every benchmark, one process at a time (``make bench``), then one combined Markdown summary.

Runs, in order, each in a fresh subprocess so that none inherits another's memory or threads:

1. ``grpo_vs_trl``   — our GRPO step vs TRL's ``GRPOTrainer`` (needs ``pip install -c constraints.txt '.[bench]'``;
   without TRL the table says so and the other benchmarks still run);
2. ``rollouts``      — our rollout generation vs a bare ``model.generate``;
3. ``scoring``       — ``RewardScorer.score`` vs a bare batched forward;
4. ``sft_step``      — our Lightning SFT step vs a bare PyTorch loop;
5. ``grpo_scaling``  — GRPO step time over num_generations x completion length;
6. ``grpo_profile``  — where one GRPO step's time goes;
7. ``selection_memory`` — selection peak RSS as the candidate pool grows (``benchmarks/selection_memory.py``);
8. ``sft_answer_logits`` — SFT forward+backward with the LM head on the answer window vs every position, on a
   narrow checkpoint with the real 151,936-token vocabulary.

Each writes ``benchmarks/results/<name>.json``; this script then writes ``benchmarks/results/SUMMARY.md``
(date, machine, thread count, load averages, every table, the targets met or missed) and prints it.
One torch thread everywhere (``OMP_NUM_THREADS=1``): the machine is shared and only ratios are claimed.

Usage: ``python -m benchmarks.run_all [--quick] [--only NAME ...] [--out DIR]``; ``--quick`` runs every
benchmark at a minimal size (seconds each: a check that the scripts work, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common

FULL: dict[str, list[str]] = {
    "grpo_vs_trl": [],
    "rollouts": [],
    "scoring": [],
    "sft_step": [],
    "grpo_scaling": [],
    "grpo_profile": [],
    "selection_memory": [],
    "sft_answer_logits": [],
}
QUICK: dict[str, list[str]] = {
    "grpo_vs_trl": ["--configs", "1x2x4", "--steps", "1", "--warmup", "1", "--rss-steps", "0"],
    "rollouts": ["--configs", "1x2x4", "--repeats", "1", "--warmup", "0"],
    "scoring": ["--n", "4", "--batch-size", "2", "--repeats", "1", "--warmup", "0"],
    "sft_step": ["--steps", "1", "--warmup", "1", "--batch-size", "2", "--n-batches", "1"],
    "grpo_scaling": ["--gens", "2", "--lengths", "2", "4", "--steps", "1", "--warmup", "1"],
    "grpo_profile": ["--config", "1x2x4", "--steps", "1", "--warmup", "1", "--profiler-steps", "1"],
    "selection_memory": ["--sizes", "200", "--k", "10"],
    "sft_answer_logits": ["--steps", "1", "--batch-size", "1", "--image-size", "56"],
}
TITLES = {
    "grpo_vs_trl": "GRPO step: ours vs TRL GRPOTrainer",
    "rollouts": "Rollout generation: ours vs bare model.generate",
    "scoring": "Reward scoring: RewardScorer.score vs bare batched forward",
    "sft_step": "SFT step: Lightning SFTPolicy vs bare PyTorch loop",
    "grpo_scaling": "GRPO step time vs num_generations x completion length",
    "grpo_profile": "Profile of one GRPO step (ours)",
    "selection_memory": "Selection peak memory vs candidate pool size",
    "sft_answer_logits": "SFT step on the real vocabulary: LM head on the answer only vs every position",
}


def command(name: str, extra: list[str], out: Path) -> list[str]:
    if name == "selection_memory":  # its own script: its workers re-run it by path
        return [sys.executable, str(common.ROOT / "benchmarks" / "selection_memory.py"), *extra, "--out", str(out)]
    return [sys.executable, "-m", f"benchmarks.{name}", *extra, "--out", str(out)]


def targets(results: dict[str, dict]) -> list[list[str]]:
    """One row per issue target: measured value, met or missed."""
    rows = []

    def row(what: str, measured: str, met: bool | None) -> None:
        rows.append([what, measured, "n/a" if met is None else ("**met**" if met else "**missed**")])

    r = results.get("grpo_vs_trl")
    if r:
        if r.get("trl", {}).get("available"):
            for res in r["results"]:
                v = res.get("ratio_ours_over_trl")
                row(f"GRPO step ≥ 1.5× TRL ({res['B']}×{res['G']}, {res['L']} tok)",
                    f"{v:.2f}×" if v else "n/a", v >= 1.5 if v else None)
        else:
            row("GRPO step ≥ 1.5× TRL", f"TRL unavailable: {r.get('trl', {}).get('error')}", None)
    r = results.get("rollouts")
    if r:
        for res in r["results"]:
            v = res["ratio_expand_over_bare"]
            row(f"rollouts ≥ 0.9× bare generate ({res['B']}×{res['G']}, {res['L']} tok)", f"{v:.2f}×", v >= 0.9)
    r = results.get("scoring")
    if r:
        v, w = r["results"]["ratio_ours_over_bare"], r["results"]["ratio_ours_over_bare_collate"]
        row("scoring ≥ 0.9× bare forward (pre-collated batches)", f"{v:.2f}×", v >= 0.9)
        row("scoring vs bare collate + forward (same work)", f"{w:.2f}×", w >= 0.9)
    r = results.get("sft_step")
    if r:
        v = r["results"]["ratio_ours_over_bare"]
        row("SFT step ≥ 0.9× bare loop", f"{v:.2f}×", v >= 0.9)
    r = results.get("grpo_scaling")
    if r:
        row("GRPO step time ≤ linear in G×L", f"log-log exponent {r['loglog_exponent']:.2f}; every cell ≤ linear: "
            f"{r['met']}", bool(r["met"]))
    r = results.get("selection_memory")
    if r and "verdict" in r:
        rows_ = r["rows"]
        row(f"selection memory flat within 20% ({rows_[0]['n']:,} → {rows_[-1]['n']:,})",
            f"{rows_[-1]['topk']['peak_mb'] / rows_[0]['topk']['peak_mb']:.2f}×",
            bool(r["verdict"].get("topk_flat_within_20pct")))
    return rows


def summary(results: dict[str, dict], load_start: list[float], load_end: list[float], wall: float) -> str:
    m = common.machine()
    v = m["versions"]
    head = [
        "# Benchmarks (`make bench`)",
        "",
        f"Date {m['date'][:10]} · machine: {m['cpu_model']}, `nproc` {m['nproc']} (shared with other jobs) · "
        f"torch threads per process: {common.THREADS} (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`) · "
        f"load average (1/5/15 min) at start {load_start}, at end {load_end} · total {wall / 60:.1f} min · "
        f"torch {v['torch']}, transformers {v['transformers']}, lightning {v['lightning']}, TRL {v['trl']}.",
        "",
        "Method: both sides in one process, same tiny Qwen2.5-VL (untrained, float32), same inputs and settings, "
        "interleaved A, B, A, B, …; medians; ratios are ours ÷ peer in throughput (> 1: ours faster). "
        "Absolute times on this shared machine are noise; the ratios are the figures.",
        "",
        "## Targets",
        "",
        common.md_table(["target", "measured", "verdict"], targets(results)),
    ]
    for name, title in TITLES.items():
        r = results.get(name)
        if not r:
            continue
        table = r.get("table", "")
        if name == "selection_memory":
            table = "```\n" + table + "\n```"
        load = f" · load {r.get('loadavg_start')} → {r.get('loadavg_end')}" if "loadavg_start" in r else ""
        wall_s = f" · {r['wall_s']} s" if "wall_s" in r else ""
        head += ["", f"## {title}", "", table, "", f"_`{name}`{wall_s}{load}_"]
    return "\n".join(head) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="minimal sizes: checks that every script runs")
    ap.add_argument("--only", nargs="+", choices=list(FULL), help="run only these")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--skip", nargs="+", default=[], choices=list(FULL), help="do not run these")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else common.RESULTS
    out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    names = [n for n in (args.only or list(plan)) if n not in args.skip]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    load_start, t0 = common.loadavg(), time.perf_counter()
    failures = {}
    for name in names:
        cmd = command(name, plan[name], out)
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=str(common.ROOT), env=env)
        print(f"[{name}: exit {p.returncode}, {time.perf_counter() - t:.0f} s]", flush=True)
        if p.returncode:
            failures[name] = p.returncode
    results = {}
    for name in FULL:
        path = out / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    text = summary(results, load_start, common.loadavg(), time.perf_counter() - t0)
    (out / "SUMMARY.md").write_text(text)
    print("\n" + text)
    if failures:
        print(f"FAILED: {failures}", file=sys.stderr)
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
