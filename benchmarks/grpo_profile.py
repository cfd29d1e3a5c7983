"""Profile of one GRPO step: where the time of our ``stage=grpo`` step goes, section by section.

The step runs as in training: ``build_policy`` from the composed ``stage=grpo`` config, driven by a real
``lightning.Trainer.fit``. Each part of the step is timed with ``time.perf_counter`` by wrapping the module's
own methods on the instance (nothing in ``src/`` is changed): prompt collation (processor), M-RoPE index,
sampling, decoding, reward, advantages/stats, the log-prob forward, the loss maths, backward, gradient
clipping, optimizer + LR scheduler, per-step logging, and Lightning's loop around ``training_step``.
Medians over the timed steps; shares of the median step.

Then a few more steps under ``torch.profiler`` give the top operators by self CPU time.

Usage: ``python -m benchmarks.grpo_profile [--config 2x4x32] [--steps 15]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import defaultdict

from benchmarks import common
from benchmarks.grpo_vs_trl import build_ours, parse_config

SECTIONS = [  # (label, what)
    ("collate", "prompt_batch: chat template + tokenizer + image processor, to tensors"),
    ("rope_index", "_rope_index: M-RoPE positions of the prompts"),
    ("generate", "sampling: prefill once per prompt, expand KV cache, decode"),
    ("decode", "tokenizer.batch_decode of the completions"),
    ("reward", "score: answer extraction, match + reward function, composite"),
    ("advantages_stats", "rest of make_rollouts: completion mask, NaN check, group advantages, stats"),
    ("logp_forward", "completion_logps: one forward over the N prompt+completion rows"),
    ("loss", "rest of policy_loss: GRPO loss maths, entropy"),
    ("backward", "manual_backward"),
    ("clip", "clip_gradients"),
    ("optimizer", "optimizer.step + lr scheduler step"),
    ("log", "_log_step: one host transfer of the stats, hacking monitor, buffered logging"),
    ("other_in_step", "the rest of training_step (zero_grad, bookkeeping)"),
    ("lightning_loop", "Lightning's loop around training_step: batch fetch, hooks"),
]


class Timer:
    def __init__(self):
        self.cur: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, obj, attr: str, label: str) -> None:
        fn = getattr(obj, attr)

        @functools.wraps(fn)
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.cur[label] += time.perf_counter() - t0

        setattr(obj, attr, timed)

    def end_step(self, wall: float) -> None:
        d = dict(self.cur)
        d["wall"] = wall
        self.steps.append(d)
        self.cur = defaultdict(float)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="2x4x32", help="BxGxL")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profiler-steps", type=int, default=4, help="steps under torch.profiler (0: skip)")
    ap.add_argument("--loss-type", default="grpo")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    run = common.Run("grpo_profile", args.out, vars(args))

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    B, G, Lc = parse_config(args.config)
    module = build_ours(B, G, Lc, args.loss_type)
    recs = common.records(max(8, 2 * B))
    timer = Timer()
    for attr, label in [("prompt_batch", "collate"), ("_rope_index", "rope_index"), ("generate", "generate"),
                        ("score", "reward"), ("make_rollouts", "make_rollouts"),
                        ("completion_logps", "logp_forward"), ("policy_loss", "policy_loss"),
                        ("manual_backward", "backward"), ("clip_gradients", "clip"), ("_log_step", "log"),
                        ("training_step", "training_step")]:
        timer.wrap(module, attr, label)
    timer.wrap(module.processor.tokenizer, "batch_decode", "decode")

    class Hooks(L.Callback):
        def on_train_start(self, trainer, pl_module):
            opt = pl_module.optimizers()
            timer.wrap(opt, "step", "optimizer_step")
            sched = pl_module.lr_schedulers()
            if sched is not None:
                timer.wrap(sched, "step", "sched_step")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = getattr(self, "t_end", None) or time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            timer.end_step(now - self.t0)
            self.t_end = now

    loader = DataLoader(recs, batch_size=B, shuffle=False, collate_fn=list, num_workers=0)
    trainer = common.lightning_trainer(args.steps + args.warmup, [Hooks()])
    trainer.fit(module, loader)

    steps = timer.steps[args.warmup:]
    per: dict[str, list[float]] = defaultdict(list)
    for d in steps:
        g = d.get
        parts = {
            "collate": g("collate", 0.0), "rope_index": g("rope_index", 0.0), "generate": g("generate", 0.0),
            "decode": g("decode", 0.0), "reward": g("reward", 0.0),
            "logp_forward": g("logp_forward", 0.0), "backward": g("backward", 0.0), "clip": g("clip", 0.0),
            "optimizer": g("optimizer_step", 0.0) + g("sched_step", 0.0), "log": g("log", 0.0),
        }
        parts["advantages_stats"] = g("make_rollouts", 0.0) - sum(
            parts[k] for k in ("collate", "rope_index", "generate", "decode", "reward"))
        parts["loss"] = g("policy_loss", 0.0) - parts["logp_forward"]
        parts["other_in_step"] = g("training_step", 0.0) - g("make_rollouts", 0.0) - g("policy_loss", 0.0) - sum(
            parts[k] for k in ("backward", "clip", "optimizer", "log"))
        parts["lightning_loop"] = d["wall"] - g("training_step", 0.0)
        parts["step"] = d["wall"]
        for k, v in parts.items():
            per[k].append(v)
    med = {k: statistics.median(v) for k, v in per.items()}
    step = med["step"]
    rows = [[label, common.ms(med[label]), f"{med[label] / step:.0%}", what] for label, what in SECTIONS]
    rows.append(["**step (median)**", f"**{common.ms(step)}**", "100%",
                 "sections are medians of their own; they need not add up exactly"])
    table = common.md_table(["section", "ms", "share", "what"], rows)

    ops = []
    if args.profiler_steps:
        from torch.profiler import ProfilerActivity, profile

        trainer2 = common.lightning_trainer(args.profiler_steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer2.fit(module, loader)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]:
            ops.append({"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / args.profiler_steps,
                        "share": e.self_cpu_time_total / total, "calls_per_step": e.count / args.profiler_steps})
        table += "\n\nTop operators by self CPU time (torch.profiler, per step; profiler overhead inflates small ops):\n\n"
        table += common.md_table(["operator", "self ms/step", "share", "calls/step"],
                                 [[o["op"], f"{o['self_cpu_ms_per_step']:.1f}", f"{o['share']:.0%}",
                                   f"{o['calls_per_step']:.0f}"] for o in ops[:10]])
    payload = {"B": B, "G": G, "L": Lc, "sections_median_s": med, "steps": steps, "top_ops": ops,
               "torch_threads": torch.get_num_threads()}
    return run.finish(payload, table)


if __name__ == "__main__":
    main()
