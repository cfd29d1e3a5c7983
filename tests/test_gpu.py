"""GPU checks (issue 8): bf16 SFT and GRPO steps, QLoRA, vLLM generation and GRPO rollouts. Skipped without CUDA.

Run them on a GPU machine with ``pytest -m gpu tests/test_gpu.py``. Each trains the tiny model for a few
steps through the same pipeline as on CPU and checks what differs on a GPU: bf16 autocast, 4-bit weights with
LoRA adapters, generation through vLLM, and GRPO rollouts from vLLM with the policy's weights pushed after each step.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from medgr2.pipeline import run

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

GPU = ["trainer=gpu", "logger=none", "evaluate.limit=16"]


def test_bf16_sft_step_trains_on_gpu(make_cfg):
    cfg = make_cfg("stage=sft", *GPU, "stage.max_steps=4", "stage.batch_size=8", "stage.val_every=4",
                   "stage.val_size=8")
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["train_rows"] > 0


def test_bf16_grpo_step_trains_on_gpu(make_cfg):
    cfg = make_cfg("stage=grpo", *GPU, "stage.max_steps=3", "stage.train_size=8", "stage.max_new_tokens=12")
    metrics = run(cfg)
    assert metrics["nan_batches"] == 0


def test_qlora_4bit_with_lora_trains_only_the_adapters(make_cfg):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes not installed")
    from medgr2.modules.sft import SFTPolicy
    from medgr2.pipeline.common import to_dict
    from medgr2.pipeline.pretrain import base_weights

    cfg = make_cfg("stage=sft", *GPU, "model.quantization=4bit", "model.lora.enabled=true")
    module = SFTPolicy(model=to_dict(cfg.model), weights=base_weights(cfg), lr=1e-3, weight_decay=0.0,
                       warmup_steps=0, total_steps=3)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    metrics = run(make_cfg("stage=sft", *GPU, "model.quantization=4bit", "model.lora.enabled=true",
                           "stage.max_steps=3", "stage.batch_size=4", "stage.val_every=3", "stage.val_size=4"))
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_vllm_generator_writes_candidates(make_cfg):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed (pip install '.[vllm]')")
    from medgr2.pipeline.generate import run_generate
    from medgr2.pipeline.pretrain import base_weights
    from medgr2.pipeline.tracking import Tracker

    weights = base_weights(make_cfg("stage=pretrain", *GPU))
    cfg = make_cfg("stage=generate", *GPU, "generator=vllm", f"generator.model={weights}", "stage.n_sources=8",
                   "generator.max_new_tokens=64", "generator.llm_kwargs={gpu_memory_utilization: 0.3}")
    metrics = run_generate(cfg, Tracker())
    assert metrics["generate/attempted"] == 8 and metrics["generate/pending"] == 0


def test_grpo_with_vllm_rollouts_keeps_the_engine_on_the_policy_weights(shared_cache):
    """rollout=vllm: every rollout batch is sampled by an engine holding the policy's current weights.

    Each step logs ``vllm_logp_gap``, the mean |log-prob under the policy - log-prob vLLM sampled with| of the sampled
    tokens at their first use (before that step's update). It stays at dtype noise while the policy moves far
    (lr 3e-2): the same tokens under the *initial* weights are far off, so a missed push would show.
    """
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed (pip install '.[vllm]')")
    import lightning as L
    from torch.utils.data import DataLoader

    from medgr2.data.synthmed import SynthMedConfig, make_item
    from medgr2.modules.grpo import GRPOPolicy

    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)}
    kw = {"max_new_tokens": 12, "num_generations": 4, "alpha": 1.0, "beta_match": 0.0, "rescale_rm": False}
    module = GRPOPolicy(spec, rollout="vllm", lr=3e-2, total_steps=4, **kw,
                        vllm={"gpu_memory_utilization": 0.2, "enforce_eager": True, "dtype": "bfloat16"})
    module.rm_fn = lambda records, texts: torch.tensor([-len(t) / 64.0 for t in texts])
    L.seed_everything(0, verbose=False)
    loader = DataLoader([make_item(SynthMedConfig(), "train", i) for i in range(8)], batch_size=2, shuffle=True,
                        collate_fn=list)
    trainer = L.Trainer(accelerator="gpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    engine = module.vllm_rollouts
    gaps = [row["vllm_logp_gap"] for row in module.history]
    print(f"vllm_logp_gap per step (bf16 engine, fp32 policy): {gaps}")
    assert trainer.global_step == 4 and engine.syncs == 3 and engine.missing == []
    assert max(gaps) < 0.1
    # Truncated importance sampling is on with rollout=vllm: the ratio policy/sampler stays near 1 when in sync.
    assert all(abs(row["is_ratio_mean"] - 1.0) < 0.2 for row in module.history)

    stale = GRPOPolicy(spec, **kw).to("cuda").eval()  # the initial weights, as an engine never synced would hold
    ro = module._buffer  # the last rollouts, sampled after 3 updates
    with torch.no_grad():
        stale_logps, _ = stale.completion_logps(stale.model, ro)
    ok = ro.completion_mask.bool() & torch.isfinite(ro.sampler_logps)
    stale_gap = float((stale_logps - ro.sampler_logps).abs()[ok].mean())
    print(f"gap to the initial weights on the last rollouts: {stale_gap:.3f}")
    assert stale_gap > 3 * max(max(gaps), 0.05)


def test_grpo_stage_runs_with_vllm_rollouts(make_cfg):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed (pip install '.[vllm]')")
    cfg = make_cfg("stage=grpo", *GPU, "stage.rollout=vllm", "stage.max_steps=3", "stage.train_size=8",
                   "stage.max_new_tokens=12", "stage.vllm.gpu_memory_utilization=0.2", "stage.vllm.enforce_eager=true")
    metrics = run(cfg)
    assert metrics["nan_batches"] == 0 and 0.0 <= metrics["test/acc"] <= 1.0


def test_sft_step_mfu_is_reported(make_cfg, capsys):
    """Not an assertion on speed: prints the achieved model FLOP utilisation of bf16 SFT steps for the README."""
    import time

    from medgr2.data.collate import ChatCollator, vqa_item
    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import load_vlm
    from medgr2.pipeline.common import load_split, to_dict
    from medgr2.pipeline.pretrain import base_weights

    cfg = make_cfg("stage=sft", *GPU)
    model, processor = load_vlm(to_dict(cfg.model), weights=base_weights(cfg), corpus_fn=tokenizer_corpus, lora=False)
    model = model.cuda().train()
    rows = load_split(cfg, "train", limit=32)
    batch = ChatCollator(processor)([vqa_item(r, "", think=True) for r in rows])
    inputs = {k: v.cuda() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = int(inputs["attention_mask"].sum())
    for i in range(12):
        if i == 2:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**{k: v for k, v in inputs.items() if k != "labels"}, labels=inputs["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.cuda.synchronize()
    step = (time.perf_counter() - t0) / 10
    peak = torch.cuda.get_device_properties(0)
    mfu = 6 * n_params * tokens / step / 989e12
    print(f"SFT step {step * 1e3:.2f} ms, {tokens} tokens, {n_params} params on {peak.name}: MFU {mfu:.2e}")
    assert torch.isfinite(loss)
