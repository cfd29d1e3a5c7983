"""Rollouts: our GRPO rollout generation (``rollout=expand`` and ``repeat``) vs a bare batched ``model.generate``.

All three arms sample G completions for each of the same B collated prompts (the processor runs once,
outside the timing, for all arms) from the same weights, with the same settings: ``do_sample``, temperature
1, top-p 1, top-k off, ``max_new_tokens=L``, the same EOS ids and pad id, eval mode, no grad.

* ``ours (expand)`` — :meth:`GRPOPolicy.generate` after :meth:`GRPOPolicy._rope_index` (the M-RoPE positions
  are part of our rollout: the loss reuses them): prefill each prompt once, expand the KV cache to G rows,
  decode through the text decoder + LM head with our sampler. The default.
* ``ours (repeat)`` — the same method with ``rollout=repeat``: HF ``generate`` with ``num_return_sequences=G``
  plus our completion mask.
* ``bare generate`` — ``model.generate(**prompt, num_return_sequences=G, ...)`` and nothing else.

Rounds are interleaved (expand, repeat, bare, expand, ...), each call seeded alike. With an untrained
model few rows stop early, so every arm decodes ~L tokens; the mean generated length is reported.

Usage: ``python -m benchmarks.rollouts [--repeats 20] [--configs 2x4x32 4x8x64]``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks import common
from benchmarks.grpo_vs_trl import build_ours, parse_config


def run_config(B: int, G: int, L: int, repeats: int, warmup: int) -> dict:
    module = build_ours(B, G, L, "grpo").eval()
    recs = common.records(B)
    prompt = module.prompt_batch(recs)  # collated once: the same tensors for every arm
    hf = module.model
    lengths: dict[str, list[float]] = {"expand": [], "repeat": [], "bare": []}

    def ours(mode: str):
        def fn():
            module.hparams.rollout = mode
            pos = module._rope_index(prompt)
            tokens = module.generate(prompt, pos)  # (N, Tc), pad after EOS
            lengths[mode].append(float((tokens != module.pad_id).sum(dim=1).float().mean()))
        return fn

    def bare():
        with torch.no_grad():
            out = hf.generate(**prompt, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=L,
                              num_return_sequences=G, pad_token_id=module.pad_id,
                              eos_token_id=module.eos_ids.tolist())
        gen = out[:, prompt["input_ids"].shape[1]:]
        lengths["bare"].append(float((gen != module.pad_id).sum(dim=1).float().mean()))

    fns = {"expand": ours("expand"), "repeat": ours("repeat"), "bare": bare}
    times = common.interleave_calls(fns, repeats, warmup, setup=lambda r: torch.manual_seed(r))
    res = {"B": B, "G": G, "L": L}
    for name, ts in times.items():
        s = common.summarize(ts)
        s["completions_per_s"] = B * G / s["median"]
        s["mean_generated_tokens"] = statistics.mean(lengths[name][warmup:])
        res[name] = s
    # throughput ratios, ours / peer: > 1 means ours is faster
    res["ratio_expand_over_bare"] = res["bare"]["median"] / res["expand"]["median"]
    res["ratio_repeat_over_bare"] = res["bare"]["median"] / res["repeat"]["median"]
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["2x4x32", "4x8x64"], help="BxGxL")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    run = common.Run("rollouts", args.out, vars(args))
    results, rows = [], []
    for c in args.configs:
        r = run_config(*parse_config(c), args.repeats, args.warmup)
        results.append(r)
        rows.append([f"{r['B']}×{r['G']}, {r['L']} tok", common.ms(r["expand"]["median"]),
                     common.ms(r["repeat"]["median"]), common.ms(r["bare"]["median"]),
                     f"{r['expand']['mean_generated_tokens']:.1f} / {r['bare']['mean_generated_tokens']:.1f}",
                     f"**{r['ratio_expand_over_bare']:.2f}×**", f"{r['ratio_repeat_over_bare']:.2f}×"])
    table = common.md_table(["prompts×G, max tokens", "ours expand ms", "ours repeat ms", "bare generate ms",
                             "tokens/row expand / bare", "expand ÷ bare (throughput)", "repeat ÷ bare"], rows)
    payload = {"results": results, "target": {"ratio_min": 0.9},
               "met": {c: r["ratio_expand_over_bare"] >= 0.9 for c, r in zip(args.configs, results, strict=True)}}
    return run.finish(payload, table)


if __name__ == "__main__":
    main()
