"""A resumed GRPO run continues exactly: the next prompts of the interrupted epoch and the same random numbers."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.modules.grpo import GRPOPolicy
from medgr2.pipeline.grpo import grpo_loader

SMALL = {"max_new_tokens": 4, "num_generations": 2, "warmup_steps": 0, "alpha": 1.0, "beta_match": 0.0,
         "rescale_rm": False, "lr": 1e-2, "total_steps": 6}


def length_reward(records, completions) -> torch.Tensor:
    return torch.tensor([-len(c) / 64.0 for c in completions])


def module(cache) -> GRPOPolicy:
    m = GRPOPolicy({"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(cache)}, **SMALL)
    m.rm_fn = length_reward
    return m


def fit(m: GRPOPolicy, steps: int, ckpt: str | None = None, resumable: bool = True, callbacks=()) -> L.Trainer:
    data = [make_item(SynthMedConfig(), "train", i) for i in range(6)]  # 3 batches an epoch
    if resumable:
        loader, state = grpo_loader(data, 2)
        callbacks = [state, *callbacks]
    else:  # the loader before the fix
        loader = DataLoader(data, batch_size=2, shuffle=True, collate_fn=list)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks))
    trainer.fit(m, loader, ckpt_path=ckpt)
    return trainer


def params(m: GRPOPolicy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.model.named_parameters()}


def run_interrupted(cache, tmp_path, stop: int, resumable: bool = True) -> GRPOPolicy:
    # Checkpointed as the GRPO stage does (ModelCheckpoint at the end of a training batch), then stopped there.
    L.seed_everything(0, verbose=False)
    saver = ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=stop, save_last=True, save_top_k=1,
                            monitor=None)
    fit(module(cache), stop, resumable=resumable, callbacks=[saver])
    L.seed_everything(123, verbose=False)  # another process, another seed: the checkpoint must restore everything
    resumed = module(cache)
    fit(resumed, 6, ckpt=str(tmp_path / "last.ckpt"), resumable=resumable)
    return resumed


def test_a_run_resumed_mid_epoch_sees_the_same_prompts_and_ends_with_the_same_weights(shared_cache, tmp_path):
    L.seed_everything(0, verbose=False)
    straight = module(shared_cache)
    fit(straight, 6)  # 2 epochs of 3 batches
    resumed = run_interrupted(shared_cache, tmp_path, stop=2)  # stopped after batch 2 of epoch 0
    assert resumed.prompt_ids == straight.prompt_ids[2 * 2:]
    after, expected = params(resumed), params(straight)
    assert all(torch.equal(after[n], expected[n]) for n in expected)


def test_a_run_resumed_at_an_epoch_boundary_continues_with_the_next_epochs_order(shared_cache, tmp_path):
    L.seed_everything(0, verbose=False)
    straight = module(shared_cache)
    fit(straight, 6)
    resumed = run_interrupted(shared_cache, tmp_path, stop=3)
    assert resumed.prompt_ids == straight.prompt_ids[3 * 2:]
    after, expected = params(resumed), params(straight)
    assert all(torch.equal(after[n], expected[n]) for n in expected)


def test_the_plain_loader_does_not_resume_the_prompt_order(shared_cache, tmp_path):
    # What the fix is for: a shuffled DataLoader restarts the epoch in a new order after a resume.
    L.seed_everything(0, verbose=False)
    straight = module(shared_cache)
    fit(straight, 6, resumable=False)
    resumed = run_interrupted(shared_cache, tmp_path, stop=2, resumable=False)
    assert resumed.prompt_ids != straight.prompt_ids[2 * 2:]


def test_the_sampler_keeps_the_order_of_a_shuffled_loader_for_the_same_seed():
    data = list(range(10))
    torch.manual_seed(7)
    plain = [b for b in DataLoader(data, batch_size=3, shuffle=True)]
    torch.manual_seed(7)
    ours = [b for b in grpo_loader(data, 3)[0]]
    assert [list(map(int, b)) for b in plain[:3]] == [list(map(int, b)) for b in ours]  # drop_last: 3 full batches
