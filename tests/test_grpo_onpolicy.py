"""GRPO stays on-policy: rollouts sample the distribution the loss scores (D1), one batch serves all mu
iterations (D5), and a batch without signal does not move the weights (skip_zero_advantage)."""

from __future__ import annotations

import json

import lightning as L
import torch
from torch.utils.data import DataLoader

from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.modules.grpo import GRPOPolicy

SMALL = {"max_new_tokens": 6, "num_generations": 4, "warmup_steps": 0, "alpha": 1.0, "beta_match": 0.0,
         "rescale_rm": False}


def spec(cache) -> dict:
    return {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(cache)}


def length_reward(records, completions) -> torch.Tensor:
    return torch.tensor([-len(c) / 64.0 for c in completions])


def records(n: int) -> list[dict]:
    return [make_item(SynthMedConfig(), "train", i) for i in range(n)]


def fit(module: GRPOPolicy, steps: int, n_records: int = 8, callbacks=()) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    loader = DataLoader(records(n_records), batch_size=2, shuffle=True, collate_fn=list)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(module, loader)
    return trainer


def test_repeat_rollouts_ignore_a_checkpoints_repetition_penalty_and_sample_what_the_loss_scores(shared_cache,
                                                                                                 tmp_path):
    # A checkpoint folder that carries Qwen2.5-VL's generation config (repetition_penalty 1.05, temperature 1e-6).
    base = GRPOPolicy(spec(shared_cache), **SMALL)
    folder = base.export(tmp_path / "ckpt")
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.update(repetition_penalty=1.05, do_sample=True, temperature=1e-6, top_k=5)
    (folder / "generation_config.json").write_text(json.dumps(gen))
    module = GRPOPolicy(spec(shared_cache), weights=str(folder), rollout="repeat", temperature=0.8, **SMALL)
    assert module._hf().generation_config.repetition_penalty == 1.05  # the trap is armed

    # Record what generate() sampled from (its processed scores) next to the raw logits.
    orig, seen = module.model.generate, {}

    def generate(**kw):
        out = orig(**kw, output_scores=True, output_logits=True, return_dict_in_generate=True)
        seen.update(scores=out.scores, logits=out.logits)
        return out.sequences

    module.model.generate = generate
    torch.manual_seed(0)
    prompt = module.prompt_batch(records(2))
    module.generate(prompt, module._rope_index(prompt))
    assert len(seen["scores"]) >= 1
    for scores, logits in zip(seen["scores"], seen["logits"], strict=True):
        # The loss scores log_softmax(logits / temperature): exactly what was sampled from.
        sampled = torch.log_softmax(scores.float(), dim=-1)
        scored = torch.log_softmax(logits.float() / 0.8, dim=-1)
        assert torch.allclose(sampled, scored, atol=1e-5)


def test_num_iterations_reuses_each_batch_so_an_epoch_sees_every_prompt_once(shared_cache):
    module = GRPOPolicy(spec(shared_cache), num_iterations=2, lr=1e-3, total_steps=8, **SMALL)
    module.rm_fn = length_reward
    trainer = fit(module, steps=8, n_records=8)
    assert trainer.global_step == 8 and len(module.history) == 8
    # 8 optimizer steps = 4 batches x 2 iterations: every one of the 8 prompts once, none dropped.
    assert sorted(module.prompt_ids) == sorted(str(r["id"]) for r in records(8))
    assert [row["rollout_reuse"] for row in module.history] == [0.0, 1.0] * 4
    assert trainer.fit_loop.epoch_progress.current.completed == 1


class Snapshots(L.Callback):
    """Parameters and AdamW state after every training batch."""

    def __init__(self):
        self.rows: list[tuple[dict, dict]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        state = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                 for p, s in opt.state.items()}
        self.rows.append(({n: p.detach().clone() for n, p in pl_module.model.named_parameters()}, state))


def _same(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    params = all(torch.equal(a[0][n], b[0][n]) for n in a[0])
    state = a[1].keys() == b[1].keys() and all(
        all(torch.equal(a[1][k][s], b[1][k][s]) for s in a[1][k]) for k in a[1])
    return params and state


def _switching_reward():
    calls = {"n": 0}

    def rm_fn(recs, texts):  # signal, then two batches with one constant reward (all advantages 0), then signal
        calls["n"] += 1
        return torch.zeros(len(texts)) if calls["n"] in (2, 3) else length_reward(recs, texts)

    return rm_fn


def test_skip_zero_advantage_leaves_parameters_and_adamw_state_untouched(shared_cache):
    module = GRPOPolicy(spec(shared_cache), lr=1e-2, total_steps=2, skip_zero_advantage=True, **SMALL)
    module.rm_fn = _switching_reward()
    snaps = Snapshots()
    trainer = fit(module, steps=2, callbacks=[snaps])
    assert trainer.global_step == 2 and module.zero_adv_skipped == 2
    assert [row["skipped"] for row in module.history] == [0.0, 1.0, 1.0, 0.0]
    assert _same(snaps.rows[0], snaps.rows[1]) and _same(snaps.rows[1], snaps.rows[2])
    assert not _same(snaps.rows[2], snaps.rows[3])  # the next batch with signal steps again


def test_without_the_option_a_zero_advantage_batch_still_moves_every_weight(shared_cache):
    # Why the option exists: the loss gradient is 0, but AdamW's momentum from the first step moves the weights.
    module = GRPOPolicy(spec(shared_cache), lr=1e-2, total_steps=2, **SMALL)
    module.rm_fn = _switching_reward()
    snaps = Snapshots()
    fit(module, steps=2, callbacks=[snaps])
    assert module.history[1]["zero_adv_frac"] == 1.0 and module.history[1]["loss"] == 0.0
    assert not _same(snaps.rows[0], snaps.rows[1])


def test_every_step_logs_the_scale_diagnostics(shared_cache):
    module = GRPOPolicy(spec(shared_cache), lr=1e-3, total_steps=2, **SMALL)
    module.rm_fn = length_reward
    fit(module, steps=2)
    for row in module.history:
        for key in ("grad_norm", "clip_fraction", "zero_adv_frac", "group_std/rm", "group_std/match",
                    "group_std/format", "group_std/total"):
            assert key in row and row[key] >= 0.0, key
    assert any(row["grad_norm"] > 0 for row in module.history)
