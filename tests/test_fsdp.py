"""FSDP2 sharding on 2 CPU processes (gloo): ``trainer=fsdp2_cpu``, the module code path of ``trainer=fsdp``.

* Rollouts, log-probs and gradients of a sharded model equal those of the same weights unsharded (2 processes
  spawned here, no Lightning): proves that generation on the FSDP2 model is right and that the calls that bypass
  the root's forward (embeddings, image features, R_φ's decoder) gather and reduce correctly.
* The real CLI: SFT (shards, trains, ranks agree, export = gathered weights, checkpoint loads unsharded and
  resumes sharded), R_φ and GRPO (with that R_φ and a sharded KL reference).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TEST_OVERRIDES

from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.training.sharding import ShardingOptions, full_digests, is_sharded

AUDIT = "medgr2.training.sharding.ShardingAudit"


def _tiny_spec(cache) -> dict:
    return {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(cache)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================ sharded == unsharded (spawned)


def _all_dtensor(model) -> bool:
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in model.parameters())


def _assert_same_grads(plain, sharded) -> int:
    """Every parameter's gradient of the sharded module (gathered) equals the unsharded one's. Returns how many
    gradients are non-zero."""
    from torch.distributed.tensor import DTensor

    nonzero = 0
    named = dict(sharded.named_parameters())
    for name, p in plain.named_parameters():
        q = named[name]
        if p.grad is None:
            assert q.grad is None, name
            continue
        g = q.grad.full_tensor() if isinstance(q.grad, DTensor) else q.grad
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        nonzero += int(p.grad.abs().sum() > 0)
    return nonzero


def _equivalence_worker(rank: int, port: int, cache: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from medgr2.data.collate import IGNORE, ChatCollator, model_inputs, vqa_item
    from medgr2.data.reward_items import reward_item
    from medgr2.modules.grpo import GRPOPolicy, Rollouts, completion_mask
    from medgr2.modules.reward import RewardRegressor
    from medgr2.modules.sft import SFTPolicy
    from medgr2.rl.lm_loss import answer_nll
    from medgr2.training.reward_collate import RewardCollator
    from medgr2.training.sharding import shard_plain, shard_vlm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (2,))
        spec = _tiny_spec(cache)
        recs = [make_item(SynthMedConfig(), "train", i) for i in range(2)]  # the same prompts on both ranks
        small = {"num_generations": 3, "max_new_tokens": 12}
        for rollout in ("expand", "repeat"):
            plain = GRPOPolicy(spec, rollout=rollout, **small)
            sharded = GRPOPolicy(spec, rollout=rollout, **small)
            shard_vlm(sharded.model, mesh)
            assert _all_dtensor(sharded.model)
            local = sum(p.to_local().numel() for p in sharded.model.parameters())
            assert local < sum(p.numel() for p in plain.model.parameters())
            prompt = plain.prompt_batch(recs)
            pos = plain._rope_index(prompt)
            torch.manual_seed(7)
            want = plain.generate(prompt, pos)  # (N, Tc)
            torch.manual_seed(7)
            got = sharded.generate(prompt, pos)
            assert torch.equal(want, got), f"{rollout}: sharded rollouts differ"
            assert _all_dtensor(sharded.model), "units were not resharded after the rollout"
        # Log-probs and their gradients: the embedding lookup and image features bypass the root's forward.
        mask, _ = completion_mask(want, plain.eos_ids)
        adv = torch.linspace(-1, 1, want.shape[0])
        for module in (plain, sharded):
            ro = Rollouts(prompt=prompt, prompt_pos=pos, completion_ids=want, completion_mask=mask.float(),
                          advantages=adv)
            logps, _ = module.completion_logps(module.model, ro)  # (N, Tc)
            (logps * mask * adv[:, None]).sum().backward()
            module.logps = logps.detach()
        torch.testing.assert_close(sharded.logps, plain.logps, rtol=1e-5, atol=1e-5)
        assert _assert_same_grads(plain.model, sharded.model) > 40
        emb = plain.model.get_input_embeddings().weight.grad
        assert emb is not None and emb.abs().sum() > 0

        # SFT: activation checkpointing recomputes each block in backward and changes no number; bf16 compute
        # (FSDP2 MixedPrecisionPolicy, fp32 shards and gradient reduction) stays close to fp32.
        base, ac, bf = SFTPolicy(spec), SFTPolicy(spec), SFTPolicy(spec)
        shard_vlm(ac.model, mesh, ShardingOptions(activation_checkpointing=True))
        shard_vlm(bf.model, mesh, ShardingOptions(mixed_precision="bf16"))
        calls = []
        ac.model.model.language_model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
        batch = ChatCollator(base.processor)([vqa_item(r) for r in recs])
        losses = {}
        for name, m in (("fp32", base), ("ac", ac), ("bf16", bf)):
            loss = answer_nll(m.model(**model_inputs(batch)).logits, batch["labels"])
            loss.backward()
            losses[name] = float(loss.detach())
        assert len(calls) == 2  # forward + recompute in backward (hooks inside the checkpointed block)
        assert losses["ac"] == pytest.approx(losses["fp32"], rel=1e-6)
        assert _assert_same_grads(base.model, ac.model) > 40
        assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2) and losses["bf16"] != losses["fp32"]
        for (name, p), q in zip(base.model.named_parameters(), bf.model.parameters(), strict=True):
            g = q.grad.full_tensor()
            assert g.dtype == torch.float32, name  # fp32 sharded parameters and reduction
            if p.grad.norm() > 1e-3:
                assert torch.nn.functional.cosine_similarity(g.flatten(), p.grad.flatten(), dim=0) > 0.98, name

        # R_φ: the decoder is called directly (no LM head); the head is a unit of its own.
        rms = []
        for _ in range(2):
            rm = RewardRegressor(spec, pooling="mean", head_hidden=8)
            torch.manual_seed(3)
            with torch.no_grad():
                for p in rm.head.parameters():
                    p.normal_(0, 0.5)
            rms.append(rm)
        plain_rm, sharded_rm = rms
        shard_vlm(sharded_rm.model, mesh)
        shard_plain(sharded_rm.head, mesh)
        batch = RewardCollator(plain_rm.processor)([reward_item(r) for r in recs])
        assert (batch["labels"] != IGNORE).any()
        outs = []
        for rm in (plain_rm, sharded_rm):
            z = rm.forward_normalized(batch)  # (B,)
            (z - torch.tensor([1.0, -1.0])).square().mean().backward()
            outs.append(z.detach())
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        assert _assert_same_grads(plain_rm, sharded_rm) > 40
    finally:
        dist.destroy_process_group()


def test_sharded_rollouts_logprobs_and_gradients_equal_the_unsharded_model(shared_cache):
    """GRPO ``generate`` (both rollout modes) on an FSDP2-sharded policy samples exactly the tokens the unsharded
    policy samples from the same seed; log-probs, R_φ scores and every gradient (gathered) match too, also with
    activation checkpointing; bf16 mixed precision stays close."""
    import torch.multiprocessing as mp

    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import ModelSpec, resolve_model_path

    resolve_model_path(ModelSpec.from_config(_tiny_spec(shared_cache)), tokenizer_corpus)  # build once, before 2 processes race
    mp.spawn(_equivalence_worker, args=(_free_port(), str(shared_cache)), nprocs=2, join=True)


def test_sharding_options_validate_and_build_the_mixed_precision_policy():
    assert ShardingOptions().mp_policy().param_dtype is None  # fp32 (CPU)
    mp = ShardingOptions(mixed_precision="bf16").mp_policy()
    assert mp.param_dtype == torch.bfloat16 and mp.reduce_dtype == torch.float32
    with pytest.raises(ValueError, match="mixed_precision"):
        ShardingOptions(mixed_precision="int8")


def test_the_strategy_refuses_tensor_parallelism():
    from medgr2.training.sharding import FSDP2Strategy

    with pytest.raises(ValueError, match="tensor_parallel_size must be 1"):
        FSDP2Strategy(tensor_parallel_size=2)


def test_the_fsdp_trainer_configs_compose(make_cfg):
    import hydra

    for name, accel in (("fsdp2_cpu", "cpu"), ("fsdp", "gpu")):
        cfg = make_cfg(f"trainer={name}")
        assert cfg.trainer.accelerator == accel
        strategy = hydra.utils.instantiate(cfg.trainer.strategy)
        assert type(strategy).__name__ == "FSDP2Strategy"
    assert strategy.sharding.mixed_precision == "bf16" and strategy.sharding.activation_checkpointing


# ============================================================================ the real CLI, 2 processes


def train_py(tmp_path: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *TEST_OVERRIDES, f"paths.cache_dir={cache}",
           "trainer=fsdp2_cpu", "logger=none", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def audit_args(out: Path) -> list[str]:
    return [f"+callbacks.shard_audit._target_={AUDIT}", f"+callbacks.shard_audit.out_dir={out}"]


def read_audits(out: Path) -> list[dict]:
    audits = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [a["rank"] for a in audits] == [0, 1] and all(a["world_size"] == 2 for a in audits)
    assert all(a["strategy"] == "FSDP2Strategy" for a in audits)
    return audits


def assert_sharded_and_synced(audits: list[dict]) -> None:
    for a in audits:
        m = a["module"]
        assert m["n_dtensor"] == m["n_params"] > 0  # every parameter is a DTensor
        assert m["local_numel"] < m["full_numel"]  # each rank holds a shard, not the model
        assert m["local_numel"] <= m["full_numel"] // 2 + 1000  # ~half (dim-0 padding on odd sizes)
        assert a["losses"] and all(math.isfinite(v) for row in a["losses"] for k, v in row.items() if k != "step")
    assert sum(a["module"]["local_numel"] for a in audits) >= audits[0]["module"]["full_numel"]
    assert audits[0]["end_digests"] == audits[1]["end_digests"]  # the gathered weights agree bit for bit


def changed(audit: dict, prefix: str = "") -> list[str]:
    return [k for k, v in audit["end_digests"].items() if k.startswith(prefix) and audit["start_digests"][k] != v]


def strip(digests: dict[str, str], prefix: str = "model.") -> dict[str, str]:
    return {k[len(prefix):]: v for k, v in digests.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_fsdp2_sft_cli_shards_trains_syncs_exports_and_resumes(tmp_path, shared_cache):
    from medgr2.data.collate import ChatCollator, model_inputs, vqa_item
    from medgr2.models.factory import load_vlm
    from medgr2.modules.sft import SFTPolicy

    sft = ["stage=sft", "stage.train_size=32", "stage.batch_size=4", "stage.val_size=8", "evaluate.limit=8"]
    proc = train_py(tmp_path, shared_cache, *sft, "stage.max_steps=3", "stage.val_every=3",
                    *audit_args(tmp_path / "audit1"))
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    audits = read_audits(tmp_path / "audit1")
    assert_sharded_and_synced(audits)
    assert audits[0]["start_step"] == 0 and audits[0]["end_step"] == 3
    assert len(changed(audits[0])) == len(audits[0]["end_digests"])  # training moved every parameter
    (run,) = [p for p in tmp_path.glob("outputs/sft/*") if (p / "policy").exists()]
    assert (run / "predictions.jsonl").exists()  # rank 0 evaluated the gathered model alone

    # The export is an ordinary save_pretrained folder holding exactly the gathered weights.
    spec = {"name": "sft_export", "path": str(run / "policy"), "image_size": 56}
    exported, processor = load_vlm(spec)
    assert not is_sharded(exported) and full_digests(exported) == strip(audits[0]["end_digests"])

    # The sharded run's checkpoint is a full state dict: an unsharded module loads it and gives the same outputs.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    plain = SFTPolicy(model=spec)
    plain.load_state_dict(ckpt["state_dict"])
    recs = [make_item(SynthMedConfig(), "train", i) for i in range(3)]
    batch = model_inputs(ChatCollator(processor)([vqa_item(r) for r in recs]))
    plain.eval()
    exported.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.model(**batch).logits, exported(**batch).logits, rtol=0, atol=0)

    # Resume the sharded checkpoint under sharding: weights, step and optimizer state carry on.
    train_py(tmp_path, shared_cache, *sft, "stage.max_steps=5", "stage.val_every=5", "stage.evaluate=false",
             f"stage.ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *audit_args(tmp_path / "audit2"))
    resumed = read_audits(tmp_path / "audit2")
    assert_sharded_and_synced(resumed)
    assert resumed[0]["start_step"] == 3 and resumed[0]["end_step"] == 5
    assert resumed[0]["start_digests"] == audits[0]["end_digests"]
    (run2,) = [p for p in tmp_path.glob("outputs/sft/*") if p != run and (p / "checkpoints").exists()]
    ckpt2 = torch.load(run2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt2["global_step"] == 5
    adam_steps = {float(s["step"]) for s in ckpt2["optimizer_states"][0]["state"].values()}
    assert adam_steps == {5.0}  # Adam's state was restored at step 3, not restarted


@pytest.mark.slow
def test_fsdp2_reward_then_grpo_with_that_reward_model_and_a_sharded_reference(tmp_path, shared_cache):
    from medgr2.models.factory import load_vlm
    from medgr2.modules.reward import load_reward_model

    # R_φ: backbone + regression head, both sharded.
    train_py(tmp_path, shared_cache, "stage=reward", "model.pretrain.enabled=false", "stage.source.size=24",
             "stage.max_steps=3", "stage.val_every=3", "stage.batch_size=8", "stage.eval_batch_size=16",
             "stage.val_fraction=0.25", "stage.warmup_steps=0", *audit_args(tmp_path / "audit_rm"))
    rm_audits = read_audits(tmp_path / "audit_rm")
    assert_sharded_and_synced(rm_audits)
    assert changed(rm_audits[0], "head.") and changed(rm_audits[0], "model.")
    (export,) = tmp_path.glob("outputs/reward/*/reward_model")
    rm = load_reward_model(export, device="cpu")
    assert full_digests(rm) == rm_audits[0]["end_digests"]  # backbone and head exported as gathered

    # GRPO scored by that R_φ (a dense reward), with beta > 0: the frozen KL reference is sharded too.
    train_py(tmp_path, shared_cache, "stage=grpo", "model.pretrain.enabled=false", "stage.max_steps=2",
             "stage.train_size=16", "stage.batch_size=2", "stage.max_new_tokens=8", "stage.evaluate=false",
             f"stage.reward_model={export}", "stage.beta=0.04", *audit_args(tmp_path / "audit_grpo"))
    audits = read_audits(tmp_path / "audit_grpo")
    assert_sharded_and_synced(audits)
    assert audits[0]["end_step"] == 2
    assert changed(audits[0], "model.") and not changed(audits[0], "ref_model.")
    ranks = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("outputs/grpo/*/grpo_ranks/rank*.json"))]
    assert not set(ranks[0]["prompt_ids"]) & set(ranks[1]["prompt_ids"])  # each rank its own prompts
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    (policy,) = tmp_path.glob("outputs/grpo/*/policy")
    exported, _ = load_vlm({"name": "grpo_export", "path": str(policy), "image_size": 56})
    assert full_digests(exported) == strip(audits[0]["end_digests"])
