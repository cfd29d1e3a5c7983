"""Reward scoring: ``RewardScorer.score`` (what ``stage=score`` and GRPO's ``rm_fn`` call) vs a bare forward.

Same R_φ (the tiny VLM backbone + a 64-wide MLP head, ``pooling=mean`` as ``conf/stage/reward.yaml``),
same N records, same batch size, no grad, eval mode. Arms, interleaved round by round:

* ``ours`` — ``RewardScorer.score(records, batch_size)`` with its defaults (on CPU: one thread, no prefetch):
  builds each reward item (prompt text, response, resolved option), collates with ``ScoringCollator``
  (the processor's tensors, bit for bit, cheaper), forwards, returns a list of floats.
* ``ours + prefetch`` — the same with ``prefetch=True``: the next batch is collated in a second Python
  thread while the model runs (uses a second core when one is free; off by default on CPU).
* ``ours, processor collation`` — the same scorer with its fast collation switched off: every batch through
  ``RewardCollator`` (the processor), i.e. ``RewardScorer.score`` as it was before the fast path.
* ``bare forward`` — the peer the issue names: for each of the SAME collated batches (collated once, outside
  the timing), ``backbone(**inputs).last_hidden_state``, masked mean over the response tokens, head,
  de-normalise, ``.tolist()``. Written with plain torch ops, not our pooling code.
* ``bare collate+forward`` — the same bare forward, but collating each batch inside the loop (the same
  ``RewardCollator``): what a hand-written scoring loop over raw records costs.

Scores of every arm must agree with the bare forward (checked, max abs difference reported). Collation alone
(the processor's and ours, on the same items) is timed after the arms.

Usage: ``python -m benchmarks.scoring [--n 128] [--batch-size 32] [--repeats 15]``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import common


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="records scored per call")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    run = common.Run("scoring", args.out, vars(args))

    from medgr2.data.collate import IGNORE, model_inputs
    from medgr2.modules.reward import RewardRegressor
    from medgr2.modules.reward_scorer import RewardScorer
    from medgr2.training.reward_collate import RewardCollator
    from medgr2.training.scoring_cache import ScoringCache

    module = RewardRegressor(model=common.tiny_spec(), lora=False, pooling="mean", head_hidden=64,
                             target_mean=2.5, target_std=6.0).eval()
    torch.manual_seed(0)
    for p in module.head.parameters():  # a non-trivial head (a fresh one outputs the mean for every input)
        torch.nn.init.normal_(p, std=0.1)
    scorer = RewardScorer(module, batch_size=args.batch_size)
    before = RewardScorer(module, batch_size=args.batch_size, prefetch=False)
    before.collate.enabled = False  # every batch through RewardCollator: the scoring path before the fast one
    recs = common.records(args.n)
    bs = args.batch_size
    items = list(scorer.items(recs))
    collate = RewardCollator(module.processor)
    batches = [collate(items[i:i + bs]) for i in range(0, len(items), bs)]
    backbone = module.model.model  # Qwen2_5_VLModel: the decoder without the LM head
    head, mean, std = module.head, float(module.target_mean), float(module.target_std)

    @torch.no_grad()
    def bare_forward(batch) -> list[float]:
        hidden = backbone(**model_inputs(batch)).last_hidden_state  # (B, T, H)
        w = (batch["labels"] != IGNORE).unsqueeze(-1).to(hidden.dtype)  # response tokens
        pooled = (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)
        return (head(pooled.float()) * std + mean).tolist()

    out: dict[str, list[float]] = {}

    def ours():
        out["ours"] = scorer.score(recs, batch_size=bs)

    def ours_prefetch():
        out["ours_prefetch"] = scorer.score(recs, batch_size=bs, prefetch=True)

    def ours_processor():
        out["ours_processor"] = before.score(recs, batch_size=bs)

    def bare():
        out["bare"] = [s for b in batches for s in bare_forward(b)]

    def bare_collate():
        out["bare_collate"] = [s for i in range(0, len(items), bs) for s in bare_forward(collate(items[i:i + bs]))]

    fns = {"ours": ours, "ours_prefetch": ours_prefetch, "ours_processor": ours_processor, "bare": bare,
           "bare_collate": bare_collate}
    times = common.interleave_calls(fns, args.repeats, args.warmup)
    diffs = {name: max(abs(a - b) for a, b in zip(out[name], out["bare"], strict=True))
             for name in ("ours", "ours_prefetch", "ours_processor", "bare_collate")}
    diff = max(diffs.values())
    res = {}
    for name, ts in times.items():
        s = common.summarize(ts)
        s["items_per_s"] = args.n / s["median"]
        res[name] = s
    res["ratio_ours_over_bare"] = res["bare"]["median"] / res["ours"]["median"]
    res["ratio_ours_over_bare_collate"] = res["bare_collate"]["median"] / res["ours"]["median"]
    res["ratio_ours_prefetch_over_bare"] = res["bare"]["median"] / res["ours_prefetch"]["median"]
    res["ratio_ours_processor_over_bare"] = res["bare"]["median"] / res["ours_processor"]["median"]
    res["max_abs_score_diff"] = diff
    res["max_abs_score_diff_by_arm"] = diffs
    # Where ours spends its time: collation alone on the same items, the processor's and ours (a fresh pixel
    # cache per pass, as each score() call has), interleaved.
    fast = scorer.collate

    def collate_ours():
        cache = ScoringCache()
        return [fast(items[i:i + bs], cache) for i in range(0, len(items), bs)]

    t_collate = common.interleave_calls(
        {"processor": lambda: [collate(items[i:i + bs]) for i in range(0, len(items), bs)], "ours": collate_ours},
        max(3, args.repeats // 3), 1)
    res["collate_only"] = common.summarize(t_collate["processor"])
    res["collate_only_ours"] = common.summarize(t_collate["ours"])
    res["fast_collation_enabled"] = bool(fast.enabled)
    table = common.md_table(
        ["records × batch", "ours items/s", "ours + prefetch items/s", "ours, processor collation items/s",
         "bare forward items/s", "bare collate+forward items/s", "ours ÷ bare forward",
         "ours + prefetch ÷ bare forward", "processor collation ÷ bare forward", "ours ÷ bare collate+forward",
         "collation ms, processor → ours (share of ours)", "max |Δscore|"],
        [[f"{args.n} × {bs}", f"{res['ours']['items_per_s']:.0f}", f"{res['ours_prefetch']['items_per_s']:.0f}",
          f"{res['ours_processor']['items_per_s']:.0f}", f"{res['bare']['items_per_s']:.0f}",
          f"{res['bare_collate']['items_per_s']:.0f}", f"**{res['ratio_ours_over_bare']:.2f}×**",
          f"{res['ratio_ours_prefetch_over_bare']:.2f}×", f"{res['ratio_ours_processor_over_bare']:.2f}×",
          f"{res['ratio_ours_over_bare_collate']:.2f}×",
          f"{common.ms(res['collate_only']['median'])} → {common.ms(res['collate_only_ours']['median'])} "
          f"({res['collate_only_ours']['median'] / res['ours']['median']:.0%})", f"{diff:.1e}"]])
    payload = {"results": res, "target": {"ratio_min": 0.9}, "met": res["ratio_ours_over_bare"] >= 0.9,
               "met_vs_collate_forward": res["ratio_ours_over_bare_collate"] >= 0.9}
    return run.finish(payload, table)


if __name__ == "__main__":
    main()
