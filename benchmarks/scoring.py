"""Reward scoring: ``RewardScorer.score`` (what ``stage=score`` and GRPO's ``rm_fn`` call) vs a bare forward.

Same R_φ (the tiny VLM backbone + a 64-wide MLP head, ``pooling=mean`` as ``conf/stage/reward.yaml``),
same N records, same batch size, no grad, eval mode. Arms, interleaved round by round:

* ``ours`` — ``RewardScorer.score(records, batch_size)``: builds each reward item (prompt text, response,
  resolved option), collates (tokenizer + image processor), forwards, returns a list of floats.
* ``bare forward`` — the peer the issue names: for each of the SAME collated batches (collated once, outside
  the timing), ``backbone(**inputs).last_hidden_state``, masked mean over the response tokens, head,
  de-normalise, ``.tolist()``. Written with plain torch ops, not our pooling code.
* ``bare collate+forward`` — the same bare forward, but collating each batch inside the loop (the same
  ``RewardCollator``): what a hand-written scoring loop over raw records costs.

Scores of ours and the bare forward must agree (checked, max abs difference reported).

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
    from medgr2.modules.reward import RewardCollator, RewardRegressor, RewardScorer

    module = RewardRegressor(model=common.tiny_spec(), lora=False, pooling="mean", head_hidden=64,
                             target_mean=2.5, target_std=6.0).eval()
    torch.manual_seed(0)
    for p in module.head.parameters():  # a non-trivial head (a fresh one outputs the mean for every input)
        torch.nn.init.normal_(p, std=0.1)
    scorer = RewardScorer(module, batch_size=args.batch_size)
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

    def bare():
        out["bare"] = [s for b in batches for s in bare_forward(b)]

    def bare_collate():
        out["bare_collate"] = [s for i in range(0, len(items), bs) for s in bare_forward(collate(items[i:i + bs]))]

    fns = {"ours": ours, "bare": bare, "bare_collate": bare_collate}
    times = common.interleave_calls(fns, args.repeats, args.warmup)
    diff = max(abs(a - b) for a, b in zip(out["ours"], out["bare"], strict=True))
    res = {}
    for name, ts in times.items():
        s = common.summarize(ts)
        s["items_per_s"] = args.n / s["median"]
        res[name] = s
    res["ratio_ours_over_bare"] = res["bare"]["median"] / res["ours"]["median"]
    res["ratio_ours_over_bare_collate"] = res["bare_collate"]["median"] / res["ours"]["median"]
    res["max_abs_score_diff"] = diff
    # where ours spends its time: collation alone, on the same items
    t_collate = common.interleave_calls({"collate": lambda: [collate(items[i:i + bs]) for i in range(0, len(items), bs)]},
                                        max(3, args.repeats // 3), 1)["collate"]
    res["collate_only"] = common.summarize(t_collate)
    table = common.md_table(
        ["records × batch", "ours items/s", "bare forward items/s", "bare collate+forward items/s",
         "ours ÷ bare forward", "ours ÷ bare collate+forward", "collation share of ours", "max |Δscore|"],
        [[f"{args.n} × {bs}", f"{res['ours']['items_per_s']:.0f}", f"{res['bare']['items_per_s']:.0f}",
          f"{res['bare_collate']['items_per_s']:.0f}", f"**{res['ratio_ours_over_bare']:.2f}×**",
          f"{res['ratio_ours_over_bare_collate']:.2f}×",
          f"{res['collate_only']['median'] / res['ours']['median']:.0%}", f"{diff:.1e}"]])
    payload = {"results": res, "target": {"ratio_min": 0.9}, "met": res["ratio_ours_over_bare"] >= 0.9,
               "met_vs_collate_forward": res["ratio_ours_over_bare_collate"] >= 0.9}
    return run.finish(payload, table)


if __name__ == "__main__":
    main()
