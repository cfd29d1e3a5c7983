"""SFT step on a narrow real-vocabulary checkpoint: LM head on the answer window only vs on every position.

The checkpoint: the tiny model's tokenizer and processor, with Qwen2.5-VL-3B's text vocabulary size (151,936
rows, tied head) and head_dim 128 (2 heads x 128 = hidden 256, 1 KV head, 2 layers), random weights — or any
real-layout folder passed with ``--model``. The batch: SynthMed SFT items with 448x448 images (256 image tokens
per row). Both arms run the same ``medgr2.modules.sft.sft_forward`` + ``answer_nll`` on the same batch, one
forward+backward each, alternating: ``answer_only`` (what ``SFTPolicy`` does) and ``full`` (logits for every
position, the former behaviour). Reported: median time and peak RSS of each arm (the kernel's peak mark is reset
before every step), their ratios, and the two losses (equal).

Usage: ``python -m benchmarks.sft_answer_logits [--steps 3] [--batch-size 4] [--image-size 448]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common

REAL_VOCAB = 151936  # Qwen2.5-VL-3B-Instruct's config.json


def narrow_real_vocab_model(out: Path) -> str:
    """The tiny folder with its text model widened to head_dim 128 and the 3B's vocabulary size."""
    import shutil

    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    src = Path(common.tiny_model_path())
    shutil.copytree(src, out, dirs_exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"].update(vocab_size=REAL_VOCAB, hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
                              intermediate_size=512, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                      "mrope_section": [16, 24, 24]})
    cfg["vision_config"]["out_hidden_size"] = 256
    cfg.pop("vocab_size", None)
    config = Qwen2_5_VLConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    return str(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed forward+backward steps per arm")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--model", default=None, help="a real-layout checkpoint folder (default: built narrow model)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    run = common.Run("sft_answer_logits", args.out, vars(args))

    from medgr2.data.collate import ChatCollator, vqa_item
    from medgr2.models.factory import load_vlm
    from medgr2.modules.sft import sft_forward
    from medgr2.rl.lm_loss import answer_nll

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or narrow_real_vocab_model(Path(tmp) / "narrow")
        model, processor = load_vlm({"name": "narrow", "path": path, "dtype": "float32",
                                     "image_size": args.image_size})
    model.train()
    recs = common.records(args.batch_size)
    batch = ChatCollator(processor)([vqa_item(r) for r in recs])
    T = batch["input_ids"].shape[1]
    n_answer = int((batch["labels"] != -100).sum(dim=1).max())

    def step(answer_only: bool) -> tuple[float, float, float]:
        common.reset_peak_rss()
        t0 = time.perf_counter()
        logits, tail, _ = sft_forward(model, batch, answer_only=answer_only)
        loss = answer_nll(logits, tail["labels"])
        loss.backward()
        dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        del logits
        return dt, common.vm_hwm_mb(), float(loss)

    res: dict[str, dict] = {"answer_only": {"t": [], "rss": []}, "full": {"t": [], "rss": []}}
    losses: dict[str, float] = {}
    step(True)  # warm-up (allocator, kernels)
    for _ in range(args.steps):
        for name in ("full", "answer_only"):
            dt, rss, loss = step(name == "answer_only")
            res[name]["t"].append(dt)
            res[name]["rss"].append(rss)
            losses[name] = loss
    out = {}
    for name, r in res.items():
        out[name] = {**common.summarize(r["t"]), "peak_rss_mb": max(r["rss"]), "loss": losses[name]}
    out["time_ratio_full_over_answer_only"] = out["full"]["median"] / out["answer_only"]["median"]
    out["rss_ratio_full_over_answer_only"] = out["full"]["peak_rss_mb"] / out["answer_only"]["peak_rss_mb"]
    out["tokens_per_row"], out["answer_tokens"] = T, n_answer
    table = common.md_table(
        ["batch × tokens (answer)", "full ms", "answer-only ms", "time ÷", "full peak RSS MB", "answer-only MB",
         "RSS ÷", "loss full / answer-only"],
        [[f"{args.batch_size} × {T} ({n_answer})", common.ms(out["full"]["median"]),
          common.ms(out["answer_only"]["median"]), f"**{out['time_ratio_full_over_answer_only']:.1f}×**",
          f"{out['full']['peak_rss_mb']:.0f}", f"{out['answer_only']['peak_rss_mb']:.0f}",
          f"**{out['rss_ratio_full_over_answer_only']:.1f}×**",
          f"{losses['full']:.6f} / {losses['answer_only']:.6f}"]])
    payload = {"results": out, "target": {"time_ratio_min": 5.0, "rss_ratio_min": 2.5},
               "met": out["time_ratio_full_over_answer_only"] >= 5.0 and out["rss_ratio_full_over_answer_only"] >= 2.5}
    return run.finish(payload, table)


if __name__ == "__main__":
    main()
