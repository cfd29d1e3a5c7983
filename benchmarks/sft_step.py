"""SFT step: our ``SFTPolicy`` in a real ``lightning.Trainer.fit`` vs a bare PyTorch loop — interleaved.

Both sides: the same tiny VLM weights (two copies loaded from the same folder), the same pre-collated batches
(``ChatCollator`` on SynthMed SFT items, ``<think>rationale</think><answer>X</answer>`` targets, collated
once outside the timing and cycled), AdamW with the same lr and weight decay, one optimizer step per batch.

* ``ours`` — ``SFTPolicy`` exactly as ``stage=sft`` builds it (warm-up/cosine ``LambdaLR``, answer-only NLL,
  the letter loss/accuracy it logs every step through ``self.log``), driven by ``Trainer.fit`` (no logger,
  no checkpointing, no progress bar: the stage adds MLflow, which is not the step).
* ``bare loop`` — ``logits = model(**inputs).logits``; shifted cross-entropy on the labelled tokens;
  ``backward``; ``AdamW.step``; ``zero_grad``. Nothing else.

The two loops run in lock-step (:class:`benchmarks.common.Interleaver`); a step's time is everything the loop
does per step. Usage: ``python -m benchmarks.sft_step [--steps 20] [--batch-size 32]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks import common


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-batches", type=int, default=4, help="distinct collated batches, cycled")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    run = common.Run("sft_step", args.out, vars(args))

    from torch.utils.data import DataLoader

    from medgr2.data.collate import ChatCollator, model_inputs, vqa_item
    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import ModelSpec, load_vlm
    from medgr2.modules.sft import SFTPolicy

    total = args.steps + args.warmup
    module = SFTPolicy(model=common.tiny_spec(), weights=None, lr=args.lr, weight_decay=0.0, warmup_steps=30,
                       total_steps=400)  # conf/stage/sft.yaml's schedule
    collate = ChatCollator(module.processor)
    bs = args.batch_size
    recs = common.records(bs * args.n_batches)
    batches = [collate([vqa_item(r) for r in recs[i:i + bs]]) for i in range(0, len(recs), bs)]
    n_tokens = float(batches[0]["input_ids"].numel())

    bare_model, _ = load_vlm(ModelSpec.from_config(common.tiny_spec()), corpus_fn=tokenizer_corpus)
    bare_model.train()
    opt = torch.optim.AdamW(bare_model.parameters(), lr=args.lr, weight_decay=0.0)

    def bare_step(batch) -> None:
        logits = bare_model(**model_inputs(batch)).logits  # (B, T, V)
        labels = batch["labels"]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def ours_arm(hook):
        loader = DataLoader(batches, batch_size=None, shuffle=False)
        trainer = common.lightning_trainer(total, [common.step_hook_callback(hook)])
        trainer.fit(module, loader)

    def bare_arm(hook):
        for i in range(total):
            bare_step(batches[i % len(batches)])
            hook()

    times = common.Interleaver(["ours", "bare"]).run({"ours": ours_arm, "bare": bare_arm})
    res = {}
    for name, ts in times.items():
        s = common.summarize(ts[args.warmup:])
        s["steps_per_s"] = 1.0 / s["median"]
        res[name] = s
    res["ratio_ours_over_bare"] = res["bare"]["median"] / res["ours"]["median"]
    res["tokens_per_batch"] = n_tokens
    table = common.md_table(
        ["batch × tokens", "ours ms/step", "bare loop ms/step", "ours steps/s", "bare steps/s", "ours ÷ bare"],
        [[f"{bs} × {int(n_tokens // bs)}", common.ms(res["ours"]["median"]), common.ms(res["bare"]["median"]),
          f"{res['ours']['steps_per_s']:.2f}", f"{res['bare']['steps_per_s']:.2f}",
          f"**{res['ratio_ours_over_bare']:.2f}×**"]])
    payload = {"results": res, "target": {"ratio_min": 0.9}, "met": res["ratio_ours_over_bare"] >= 0.9}
    return run.finish(payload, table)


if __name__ == "__main__":
    main()
