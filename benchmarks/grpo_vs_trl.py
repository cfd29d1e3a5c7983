"""GRPO step: our ``stage=grpo`` module in a real Lightning ``fit`` vs TRL's ``GRPOTrainer.train`` — interleaved.

Both sides: the same tiny Qwen2.5-VL (untrained, float32, SDPA), the same SynthMed prompts WITH their images
(TRL's VLM path: conversational prompts + an ``image`` column), B prompts x G generations, the same max
completion length, ``loss_type``, ``beta=0`` (no reference model), epsilon 0.2, ``scale_rewards=group``,
temperature 1, top-p 1, top-k off, one optimizer step per generation batch (``num_iterations=1``), AdamW at
lr 1e-4, gradient clipping at 1.0, and the same cheap reward: ``1[answer letter matches] - len(text)/64`` (ours
through ``beta_match=1`` + an ``rm_fn`` with ``alpha=1``; TRL through two reward functions). TRL runs with
``gradient_checkpointing=False`` and ``bf16=False`` (its defaults are True; we checkpoint nothing and train
in float32), ``report_to=[]``; our trainer has no logger either.

Each loop is the library's own: ours is ``lightning.Trainer.fit`` (our ``build_policy`` from the composed
``stage=grpo`` config), TRL's is ``GRPOTrainer.train``. They run in lock-step (one step of each in turn, see
:class:`benchmarks.common.Interleaver`); a step's time is everything its loop does per step (batch fetch,
prompt processing, generation, reward, loss, backward, clipping, optimizer, logging bookkeeping).

Peak RSS: each side also runs a few steps alone in a fresh subprocess (``--worker``), so ``ru_maxrss`` is its own.

Usage: ``python -m benchmarks.grpo_vs_trl [--steps 20] [--configs 2x4x32 4x8x64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from benchmarks import common

ARMS = ("ours", "ours_repeat", "trl")


def parse_config(s: str) -> tuple[int, int, int]:
    b, g, length = (int(x) for x in s.lower().split("x"))
    return b, g, length


def match_reward(completions, answer, **_: Any) -> list[float]:
    from medgr2.data.response_format import extract_answer

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(extract_answer(t) == a) for t, a in zip(texts, answer, strict=True)]


TRL_LENGTHS: list[float] = []  # mean completion length (tokens) of every TRL generation batch


def length_reward_trl(completions, completion_ids=None, **_: Any) -> list[float]:
    if completion_ids is not None:
        TRL_LENGTHS.append(sum(len(c) for c in completion_ids) / max(1, len(completion_ids)))
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [-len(t) / 64.0 for t in texts]


# ------------------------------------------------------------------------------------------------ ours


def build_ours(B: int, G: int, L: int, loss_type: str, rollout: str = "expand"):
    from medgr2.pipeline.grpo import build_policy

    cfg = common.compose(
        "stage=grpo", f"stage.batch_size={B}", f"stage.num_generations={G}", f"stage.max_new_tokens={L}",
        f"stage.loss_type={loss_type}", "stage.beta=0.0", "stage.epsilon=0.2", "stage.scale_rewards=group",
        "stage.temperature=1.0", "stage.top_p=1.0", "stage.num_iterations=1", "stage.lr=1e-4",
        "stage.warmup_steps=0", "stage.max_grad_norm=1.0", "stage.alpha=1.0", "stage.beta_match=1.0",
        "stage.format_weight=0.0", "stage.rescale_rm=false", "stage.reward_model=null", f"stage.rollout={rollout}")
    module = build_policy(cfg, weights=None)
    module.rm_fn = common.length_reward  # alpha * rm: the cheap length term; beta_match * match: the match term
    return module


def ours_arm(module, recs, B: int, steps: int):
    from torch.utils.data import DataLoader

    def arm(hook):
        loader = DataLoader(recs, batch_size=B, shuffle=False, collate_fn=list, num_workers=0)
        trainer = common.lightning_trainer(steps, [common.step_hook_callback(hook)])
        trainer.fit(module, loader)

    return arm


# ------------------------------------------------------------------------------------------------ TRL


class TRLSections:
    """Collects TRL's own profiling sections (``profiling_context``) per step, without any logging backend."""

    def __init__(self):
        self.per_step: list[dict[str, float]] = [defaultdict(float)]

    def install(self) -> None:
        from trl.extras import profiling

        sections = self

        def _log_metrics(ctx, duration: float) -> None:
            sections.per_step[-1][ctx.name.split(".", 1)[-1]] += duration

        profiling.ProfilingContext._log_metrics = _log_metrics

    def next_step(self) -> None:
        self.per_step.append(defaultdict(float))


def build_trl(B: int, G: int, L: int, loss_type: str, recs, steps: int, out_dir: str):
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from medgr2.data.prompting import SHORT_INSTRUCTION, user_text
    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import ModelSpec, load_vlm

    model, processor = load_vlm(ModelSpec.from_config(common.tiny_spec()), corpus_fn=tokenizer_corpus)
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"},
                                                      {"type": "text", "text": user_text(r, SHORT_INSTRUCTION)}]}],
             "image": r["image"], "answer": r["answer"]} for r in recs]
    ds = datasets.Dataset.from_list(rows)
    args = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=B * G, num_generations=G, max_completion_length=L,
        loss_type=loss_type, beta=0.0, epsilon=0.2, scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0,
        num_iterations=1, learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, report_to=[], save_strategy="no",
        max_steps=steps, dataloader_num_workers=0, seed=0, disable_tqdm=True, shuffle_dataset=False)
    trainer = GRPOTrainer(model=model, reward_funcs=[match_reward, length_reward_trl], args=args, train_dataset=ds,
                          processing_class=processor)
    return trainer


def trl_arm(trainer, sections: TRLSections | None, saw: dict[str, bool]):
    from transformers import TrainerCallback

    class _Hook(TrainerCallback):
        def __init__(self, hook):
            self.hook = hook

        def on_step_end(self, args, state, control, **kw):
            self.hook()
            if sections is not None:
                sections.next_step()

    inner = trainer._compute_loss

    def _compute_loss(model, inputs):  # records that the images really reach TRL's forward
        saw["pixel_values"] = saw.get("pixel_values", False) or ("pixel_values" in inputs)
        return inner(model, inputs)

    trainer._compute_loss = _compute_loss

    def arm(hook):
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict; nothing else changes
        trainer.add_callback(_Hook(hook))
        trainer.train()

    return arm


# ------------------------------------------------------------------------------------------------ one config


def run_config(B: int, G: int, L: int, loss_type: str, steps: int, warmup: int, arms: tuple[str, ...]) -> dict:
    total = steps + warmup
    recs = common.records(max(8, 2 * B))  # cycled by both loops: epoch after epoch over the same prompts
    built: dict[str, Any] = {}
    sections = TRLSections()
    TRL_LENGTHS.clear()
    saw: dict[str, bool] = {}
    fns = {}
    with tempfile.TemporaryDirectory(prefix="medgr2-trl-") as tmp:
        if "ours" in arms:
            built["ours"] = build_ours(B, G, L, loss_type)
            fns["ours"] = ours_arm(built["ours"], recs, B, total)
        if "ours_repeat" in arms:
            built["ours_repeat"] = build_ours(B, G, L, loss_type, rollout="repeat")
            fns["ours_repeat"] = ours_arm(built["ours_repeat"], recs, B, total)
        if "trl" in arms:
            sections.install()
            built["trl"] = build_trl(B, G, L, loss_type, recs, total, tmp)
            fns["trl"] = trl_arm(built["trl"], sections, saw)
        inter = common.Interleaver(list(fns))
        times = inter.run(fns)
    res: dict[str, Any] = {"B": B, "G": G, "L": L, "completions_per_step": B * G}
    for name, ts in times.items():
        s = common.summarize(ts[warmup:])
        s["samples_per_s"] = B * G / s["median"]
        res[name] = s
    for name in ("ours", "ours_repeat"):
        if name in built:
            hist = built[name].history[warmup:]
            res[name]["sections_median_s"] = {
                k: statistics.median(h[k] for h in hist) for k in hist[0] if k.startswith("time/")}
            res[name]["completion_len"] = statistics.median(h["completion_len"] for h in hist)
    if "trl" in built:
        steps_sec = [dict(d) for d in sections.per_step[warmup:total]]
        keys = sorted({k for d in steps_sec for k in d})
        res["trl"]["sections_median_s"] = {k: statistics.median(d.get(k, 0.0) for d in steps_sec) for k in keys}
        res["trl"]["saw_pixel_values"] = bool(saw.get("pixel_values"))
        lens = TRL_LENGTHS[warmup:total] or TRL_LENGTHS
        res["trl"]["completion_len"] = statistics.median(lens) if lens else None
    if "ours" in res and "trl" in res:
        res["ratio_ours_over_trl"] = res["trl"]["median"] / res["ours"]["median"]  # throughput ratio
    if "ours_repeat" in res and "trl" in res:
        res["ratio_ours_repeat_over_trl"] = res["trl"]["median"] / res["ours_repeat"]["median"]
    return res


# ------------------------------------------------------------------------------------------------ peak RSS


def worker(side: str, B: int, G: int, L: int, loss_type: str, steps: int) -> dict:
    """One side alone in this (fresh) process: peak RSS after a few steps."""
    common.one_thread()
    common.quiet()
    import gc

    import lightning  # noqa: F401  (both workers import both stacks: the same floor)
    import trl  # noqa: F401

    recs = common.records(max(8, 2 * B))
    gc.collect()
    reset = common.reset_peak_rss()
    floor = common.vm_rss_mb()  # after the imports: both workers import both stacks, the same floor
    t0 = time.perf_counter()
    if side == "ours":
        module = build_ours(B, G, L, loss_type)
        ours_arm(module, recs, B, steps)(lambda: None)
    else:
        with tempfile.TemporaryDirectory(prefix="medgr2-trl-") as tmp:
            trl_arm(build_trl(B, G, L, loss_type, recs, steps, tmp), None, {})(lambda: None)
    peak = common.vm_hwm_mb() if reset else common.peak_rss_mb()
    return {"side": side, "peak_rss_mb": peak, "import_floor_mb": floor, "peak_above_floor_mb": peak - floor,
            "peak_is_since_reset": reset, "seconds": time.perf_counter() - t0, "steps": steps}


def peak_rss(B: int, G: int, L: int, loss_type: str, steps: int) -> dict:
    out = {}
    for side in ("ours", "trl"):
        cmd = [sys.executable, "-m", "benchmarks.grpo_vs_trl", "--worker", side, "--configs", f"{B}x{G}x{L}",
               "--loss-type", loss_type, "--steps", str(steps)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(common.ROOT), env=dict(os.environ))
        if p.returncode:
            out[side] = {"error": p.stderr[-2000:]}
        else:
            out[side] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------------------------------ main


def phase_table(r: dict) -> str:
    """Where each side's median step goes (ours: the module's own per-step timings; TRL: its profiling_context)."""
    o, t = r["ours"], r["trl"]
    os_, ts = o["sections_median_s"], t["sections_median_s"]
    o_roll = os_.get("time/generate", 0.0) + os_.get("time/reward", 0.0)
    t_roll = ts.get("_prepare_inputs", 0.0)
    o_fwd, t_fwd = os_.get("time/logp_forward", 0.0), ts.get("compute_loss", 0.0)
    o_bwd = os_.get("time/backward", 0.0)
    rows = [
        ["rollouts: prompt processing, sampling, decoding, reward, advantages", common.ms(o_roll), common.ms(t_roll)],
        ["  of which sampling (TRL: `transformers.generate`; ours includes prompt collation)",
         common.ms(os_.get("time/generate", 0.0)), common.ms(ts.get("transformers.generate", 0.0))],
        ["log-prob forward + loss", common.ms(o_fwd), common.ms(t_fwd)],
        ["backward, clipping, optimizer (TRL: also its loop and logging)", common.ms(o_bwd),
         common.ms(t["median"] - t_roll - t_fwd)],
        ["ours: loop and logging (rest of the step)", common.ms(o["median"] - o_roll - o_fwd - o_bwd), ""],
        ["**step (median)**", common.ms(o["median"]), common.ms(t["median"])],
        ["generated tokens per completion (median)", f"{o.get('completion_len', float('nan')):.1f}",
         f"{t.get('completion_len') or float('nan'):.1f}"],
    ]
    return (f"Where the step goes, {r['B']}×{r['G']}, {r['L']} tokens (medians of each part, ms):\n\n"
            + common.md_table(["phase", "ours", "TRL"], rows))



def trl_status() -> dict[str, Any]:
    try:
        import trl

        return {"available": True, "version": trl.__version__}
    except Exception as err:  # noqa: BLE001
        return {"available": False, "error": f"{type(err).__name__}: {err}"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["2x4x32", "4x8x64"], help="BxGxL: prompts x generations x tokens")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps per side")
    ap.add_argument("--loss-type", default="grpo")
    ap.add_argument("--rss-steps", type=int, default=4, help="steps of the peak-RSS subprocesses (0: skip)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        B, G, L = parse_config(args.configs[0])
        print(json.dumps(worker(args.worker, B, G, L, args.loss_type, args.steps)))
        return {}

    run = common.Run("grpo_vs_trl", args.out, vars(args))
    status = trl_status()
    arms = ARMS if status["available"] else ("ours", "ours_repeat")
    rows, results = [], []
    for c in args.configs:
        B, G, L = parse_config(c)
        r = run_config(B, G, L, args.loss_type, args.steps, args.warmup, arms)
        if args.rss_steps and status["available"] and c == args.configs[0]:
            r["peak_rss"] = peak_rss(B, G, L, args.loss_type, args.rss_steps)
        results.append(r)
        trl_ms = common.ms(r["trl"]["median"]) if "trl" in r else "n/a"
        rss = r.get("peak_rss", {})
        rss_txt = (f"{rss['ours'].get('peak_above_floor_mb', float('nan')):.0f} / "
                   f"{rss['trl'].get('peak_above_floor_mb', float('nan')):.0f}" if rss else "—")
        rows.append([f"{B}×{G}, {L} tok", common.ms(r["ours"]["median"]), common.ms(r["ours_repeat"]["median"]),
                     trl_ms, f"{r['ours']['samples_per_s']:.1f}",
                     f"{r['trl']['samples_per_s']:.1f}" if "trl" in r else "n/a",
                     f"**{r['ratio_ours_over_trl']:.2f}×**" if "ratio_ours_over_trl" in r else "n/a",
                     f"{r['ratio_ours_repeat_over_trl']:.2f}×" if "ratio_ours_repeat_over_trl" in r else "n/a",
                     rss_txt])
    table = common.md_table(
        ["prompts×G, max tokens", "ours ms/step", "ours (rollout=repeat) ms", "TRL ms/step", "ours compl./s",
         "TRL compl./s", "ours ÷ TRL (throughput)", "ours repeat ÷ TRL", "peak RSS above imports, MB ours / TRL"], rows)
    if not status["available"]:
        table += f"\n\nTRL could not be imported: {status['error']}"
    else:
        saw = all(r["trl"].get("saw_pixel_values") for r in results)
        table += (f"\n\nTRL {status['version']} `GRPOTrainer.train()` vs our `lightning.Trainer.fit()` of "
                  f"`stage=grpo`, interleaved step by step, {args.steps} timed steps each after {args.warmup} warm-up. "
                  f"Same tiny Qwen2.5-VL with the images (TRL's VLM path; pixel values reached its forward: {saw}), "
                  f"loss `{args.loss_type}`, beta 0, epsilon 0.2, scale_rewards group, temperature 1, top-p 1, "
                  "lr 1e-4, clip 1.0, reward = match + length; TRL with `gradient_checkpointing=False`, `bf16=False` "
                  "(its defaults are True). Peak RSS: each side alone in a fresh process, above the shared import "
                  "floor.\n\n" + phase_table(results[0]))
    payload = {"trl": status, "results": results,
               "target": {"ratio_ours_over_trl_min": 1.5},
               "met": {c: r.get("ratio_ours_over_trl", 0) >= 1.5 for c, r in zip(args.configs, results, strict=True)}}
    return run.finish(payload, table)


if __name__ == "__main__":
    main()
