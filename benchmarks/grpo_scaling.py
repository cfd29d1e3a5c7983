"""Scaling: our GRPO step time over a grid of num_generations G x max completion length L (B prompts fixed).

One ``GRPOPolicy`` per grid cell (``build_policy`` from the composed ``stage=grpo`` config), each in its own
Lightning ``fit``; all cells run in lock-step, one step of each cell per round
(:class:`benchmarks.common.Interleaver`), so load from other jobs hits every cell alike. Reward: the cheap
match + length reward of :mod:`benchmarks.grpo_vs_trl`. The model is untrained, so nearly every row runs to L.

Judged against the target "step time grows no worse than linearly in G x L": with t(G, L) the median step
time and c0 the smallest cell, every cell must have t(c) / t(c0) <= (G L)(c) / (G L)(c0); the fitted exponent
b of t ∝ (G L)^b (least squares in log-log) and the affine fit t = a + k (G L) (a: fixed cost per step) are
reported too.

Usage: ``python -m benchmarks.grpo_scaling [--gens 2 4 8 16] [--lengths 16 32 64 128] [--steps 6]``.
"""

from __future__ import annotations

import argparse
import math
import statistics

from benchmarks import common
from benchmarks.grpo_vs_trl import build_ours, ours_arm


def fit_loglog(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares of log y = log c + b log x -> (b, c)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    b = sum((a - mx) * (c - my) for a, c in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
    return b, math.exp(my - b * mx)


def fit_affine(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + k x -> (a, k, R²)."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    a = my - k * mx
    ss_res = sum((y - a - k * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
    return a, k, 1 - ss_res / ss_tot


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gens", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--batch-size", type=int, default=2, help="prompts per step")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per cell")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--loss-type", default="grpo")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    run = common.Run("grpo_scaling", args.out, vars(args))

    B, total = args.batch_size, args.steps + args.warmup
    recs = common.records(max(8, 2 * B))
    cells = [(g, n) for g in args.gens for n in args.lengths]
    modules = {f"G{g}_L{n}": build_ours(B, g, n, args.loss_type) for g, n in cells}
    arms = {name: ours_arm(m, recs, B, total) for name, m in modules.items()}
    times = common.Interleaver(list(arms)).run(arms)

    grid = []
    for (g, n), name in zip(cells, modules, strict=True):
        s = common.summarize(times[name][args.warmup:])
        hist = modules[name].history[args.warmup:]
        sections = {k[5:]: statistics.median(h[k] for h in hist) for k in hist[0] if k.startswith("time/")}
        grid.append({"G": g, "L": n, "GL": g * n, **s, "sections_median_s": sections,
                     "completion_len": statistics.median(h["completion_len"] for h in hist)})
    base = min(grid, key=lambda c: (c["GL"], c["median"]))
    for c in grid:
        c["time_ratio"] = c["median"] / base["median"]
        c["work_ratio"] = c["GL"] / base["GL"]
        c["within_linear"] = c["time_ratio"] <= c["work_ratio"] * 1.0 + 1e-9
    xs, ys = [c["GL"] for c in grid], [c["median"] for c in grid]
    b, _ = fit_loglog(xs, ys)
    a, k, r2 = fit_affine(xs, ys)
    gen_share = {c["G"] * 1000 + c["L"]: c["sections_median_s"].get("generate", float("nan")) / c["median"] for c in grid}

    rows = []
    for g in args.gens:
        row = [f"G={g}"]
        for n in args.lengths:
            c = next(x for x in grid if x["G"] == g and x["L"] == n)
            row.append(f"{common.ms(c['median'])} ({c['time_ratio']:.1f}× / {c['work_ratio']:.0f}×)")
        rows.append(row)
    table = common.md_table([f"B={B}, ms/step (time ÷ smallest / G·L ÷ smallest)"] + [f"L={n}" for n in args.lengths],
                            rows)
    verdict = all(c["within_linear"] for c in grid)
    table += (f"\n\nlog-log exponent of step time in G·L: **{b:.2f}** (1 = linear); affine fit t = {1000 * a:.0f} ms + "
              f"{1e6 * k:.1f} µs × G·L (R² {r2:.3f}); every cell within linear growth of the smallest: **{verdict}**")
    payload = {"grid": grid, "loglog_exponent": b, "affine": {"intercept_s": a, "slope_s_per_GL": k, "r2": r2},
               "generate_share": gen_share, "target": "time ratio <= G·L ratio for every cell", "met": verdict}
    return run.finish(payload, table)


if __name__ == "__main__":
    main()
