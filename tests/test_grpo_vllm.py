"""GRPO's ``rollout=vllm`` glue on CPU: weights pushed, prompts sent, completions packed, the missing-vLLM error.

vLLM itself is GPU-only and not installed here. What these tests exercise is our side: the tensors we push
(names, shapes and values of ``save_pretrained``'s output, LoRA merged), the engine's start folder, the prompt
strings (identical to the HF path's), the conversion of per-sample token lists into the HF path's ``(N, Tc)``
tensor, and when GRPO starts, pushes and samples. :class:`RecordingEngine` stands in for ``vllm.LLM`` only to
record what our code hands an engine; the real engine is exercised by ``tests/test_gpu.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader

from medgr2.data.collate import ChatCollator, model_inputs
from medgr2.data.synthmed import SynthMedConfig, make_item, tokenizer_corpus
from medgr2.models.factory import load_vlm
from medgr2.modules.grpo import GRPOPolicy, completion_mask
from medgr2.training.vllm_rollouts import (
    VLLMRollouts,
    completion_tokens,
    pack_completions,
    policy_weights,
    write_engine_checkpoint,
)
from medgr2.utils.optional import VLLMNotInstalledError

SMALL = {"max_new_tokens": 8, "num_generations": 4, "warmup_steps": 0}
no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")


def spec(cache) -> dict:
    return {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(cache)}


def make_policy(cache, **kw) -> GRPOPolicy:
    module = GRPOPolicy(spec(cache), **{**SMALL, "alpha": 1.0, "beta_match": 0.0, "rescale_rm": False, **kw})
    module.rm_fn = lambda records, texts: torch.tensor([-len(t) / 64.0 for t in texts])
    return module


def records(n: int) -> list[dict]:
    return [make_item(SynthMedConfig(), "train", i) for i in range(n)]


def saved_tensors(model) -> dict[str, torch.Tensor]:
    """What ``save_pretrained`` writes for ``model``."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}


def lora_with_nonzero_adapters(cache):
    """A LoRA-wrapped tiny model whose adapters change the outputs (peft initialises B to zero)."""
    model, processor = load_vlm(spec(cache), corpus_fn=tokenizer_corpus, lora=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.5)
    return model, processor


# ============================================================================================ the missing vLLM


@no_vllm
def test_rollout_vllm_without_vllm_fails_at_construction_with_one_clear_line(shared_cache, make_cfg):
    with pytest.raises(VLLMNotInstalledError) as err:
        make_policy(shared_cache, rollout="vllm")
    msg = str(err.value)
    assert "\n" not in msg and "pip install" in msg and "vllm" in msg and "stage.rollout=expand" in msg

    from medgr2.pipeline.grpo import build_policy

    cfg = make_cfg("stage=grpo", "stage.rollout=vllm", "stage.vllm.enforce_eager=true")
    with pytest.raises(VLLMNotInstalledError, match="stage.rollout=expand"):
        build_policy(cfg, None)


def test_the_config_carries_the_rollout_choice_and_the_engine_options(make_cfg):
    cfg = make_cfg("stage=grpo", "stage.rollout=vllm", "stage.vllm.gpu_memory_utilization=0.5")
    assert cfg.stage.rollout == "vllm" and cfg.stage.vllm.gpu_memory_utilization == 0.5
    assert {"gpu_memory_utilization", "enforce_eager", "dtype"} <= set(cfg.stage.vllm)


# ============================================================================================ pushed weights


def test_policy_weights_are_exactly_what_save_pretrained_writes(shared_cache):
    model, _ = load_vlm(spec(shared_cache), corpus_fn=tokenizer_corpus, lora=False)
    pushed = dict(policy_weights(model))
    saved = saved_tensors(model)
    assert set(pushed) == set(saved)  # checkpoint names (transformers 5 renames reverted), tied lm_head dropped
    assert all(pushed[k].shape == saved[k].shape and torch.equal(pushed[k], saved[k]) for k in saved)
    # The live parameters, no copies: a push costs no extra memory on the training side.
    live = {p.data_ptr() for p in model.parameters()}
    assert all(t.data_ptr() in live for t in pushed.values())


def test_policy_weights_merge_lora_adapters_as_merge_and_unload_does(shared_cache):
    model, _ = lora_with_nonzero_adapters(shared_cache)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pushed = dict(policy_weights(model))
    merged = saved_tensors(copy.deepcopy(model).merge_and_unload())
    assert set(pushed) == set(merged) and not any("lora" in k or "base_layer" in k for k in pushed)
    changed = 0
    for k, ref in merged.items():
        assert pushed[k].shape == ref.shape and pushed[k].dtype == ref.dtype, k
        torch.testing.assert_close(pushed[k], ref, atol=1e-6, rtol=1e-5)
        changed += "q_proj" in k and "weight" in k and not torch.equal(ref, saved_base(before, k))
    assert changed > 0  # the adapters really were merged in
    # The policy itself is untouched (no merge/unmerge in place).
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def saved_base(params: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The unmerged base weight of a LoRA-wrapped projection, by its checkpoint name (model.layers.* form)."""
    tail = key.split("layers.", 1)[1].rsplit(".", 1)[0]  # "0.self_attn.q_proj"
    return next(v for n, v in params.items() if n.endswith(f"layers.{tail}.base_layer.weight"))


def test_the_engine_start_folder_loads_back_as_the_merged_policy(shared_cache, tmp_path):
    model, processor = lora_with_nonzero_adapters(shared_cache)
    folder = write_engine_checkpoint(model, processor, tmp_path / "engine")
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(os.listdir(folder))
    plain, proc2 = load_vlm(spec(shared_cache), weights=str(folder), lora=False)
    assert proc2.image_processor.size == processor.image_processor.size  # same image tokens per image
    items = [{"image": r["image"], "prompt": r["question"], "prefix": "", "target": ""} for r in records(2)]
    batch = model_inputs(ChatCollator(processor, generation=True)(items))
    model.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


# ============================================================================================ prompts


def test_vllm_prompts_are_the_strings_the_hf_collator_encodes(shared_cache):
    module = make_policy(shared_cache)
    recs = records(3)
    prompts, images = module.vllm_prompts(recs)
    items = module.prompt_items(recs)
    assert prompts == [module.collate.prompt_text(it) for it in items]
    assert all(p.count("<|image_pad|>") == 1 and p.endswith("<|im_start|>assistant\n") for p in prompts)
    assert all(img.mode == "RGB" for img in images)
    # Tokenised with the images, they are exactly the prompt tensors the log-prob forward uses.
    again = module.processor(text=prompts, images=images, return_tensors="pt", padding=True)
    hf = module.prompt_batch(recs)
    assert torch.equal(again["input_ids"], hf["input_ids"]) and torch.equal(again["pixel_values"], hf["pixel_values"])


# ============================================================================================ completions


def test_pack_completions_rebuilds_the_hf_rollout_tensor(shared_cache):
    module = make_policy(shared_cache, max_new_tokens=12)
    torch.manual_seed(0)
    prompt = module.prompt_batch(records(2))
    hf_tokens = module.generate(prompt, module._rope_index(prompt))  # (N, Tc) from the HF path
    eos = module.eos_ids.tolist()
    # The untrained model rarely stops: end two rows early, as the HF path writes a stopped row (pad after EOS).
    for r, t in ((1, 3), (6, 0)):
        hf_tokens[r, t] = eos[0]
        hf_tokens[r, t + 1 :] = module.pad_id
    mask, has_eos = completion_mask(hf_tokens, module.eos_ids)
    assert has_eos.sum() >= 2 and not has_eos.all()
    # What vLLM returns per sample: the tokens up to and including the EOS, no padding (plus, here, junk after
    # an EOS, which must be cut).
    seqs = [row[m].tolist() + ([7, 7] if e else []) for row, m, e in zip(hf_tokens, mask, has_eos, strict=True)]
    tokens, logps = pack_completions(seqs, eos, module.pad_id, [[-0.5] * len(s) for s in seqs])
    assert torch.equal(tokens, hf_tokens)
    assert logps.shape == tokens.shape and torch.equal(logps != 0, mask)


def test_pack_completions_keeps_group_order_and_pads_after_the_first_eos():
    tokens, logps = pack_completions([[5, 9, 6], [5, 6, 7, 8], [9], [4]], eos_ids=[9], pad_id=0,
                                     logps=[[-1.0, -2.0, -3.0], [-1.0] * 4, [-0.5], [-0.25]])
    assert tokens.tolist() == [[5, 9, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0], [4, 0, 0, 0]]
    assert logps.tolist() == [[-1.0, -2.0, 0, 0], [-1.0] * 4, [-0.5, 0, 0, 0], [-0.25, 0, 0, 0]]
    assert pack_completions([[]], [9], 0)[0].shape == (1, 1)


def test_completion_tokens_reads_logprobs_and_restores_a_stop_token_left_out():
    lp = lambda tok, v: {tok: SimpleNamespace(logprob=v)}  # noqa: E731 - vLLM's per-position dict
    ended = SimpleNamespace(token_ids=[5, 9], logprobs=[lp(5, -1.0), lp(9, -2.0)], finish_reason="stop",
                            stop_reason=None)
    assert completion_tokens(ended, [9, 3]) == ([5, 9], [-1.0, -2.0])
    cut = SimpleNamespace(token_ids=[5], logprobs=[lp(5, -1.0)], finish_reason="stop", stop_reason=3)
    ids, lps = completion_tokens(cut, [9, 3])
    assert ids == [5, 3] and lps[0] == -1.0 and math.isnan(lps[1])
    truncated = SimpleNamespace(token_ids=[5, 6], logprobs=None, finish_reason="length", stop_reason=None)
    ids, lps = completion_tokens(truncated, [9])
    assert ids == [5, 6] and all(math.isnan(v) for v in lps)


# ============================================================================================ GRPO's use of an engine


class RecordedSamplingParams:
    """Keeps the keyword arguments our code builds ``vllm.SamplingParams`` with."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class RecordingModel:
    """Receives what our sync pushes through ``apply_model``: one ``{name: tensor copy}`` per push."""

    def __init__(self, names: list[str]):
        self.names = names
        self.pushes: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights):
        got = {n: t.detach().clone() for n, t in weights}
        self.pushes.append(got)
        return set(got)

    def named_parameters(self):
        return [(n, None) for n in self.names]


class RecordingEngine:
    """A stand-in for ``vllm.LLM`` that records what GRPO's glue gives an engine and answers with fixed tokens.

    It tests our code only (when we start, push, reset the cache, and what we send and how we read the answer);
    it says nothing about vLLM. The real engine is exercised by ``tests/test_gpu.py``.
    """

    made: list[RecordingEngine] = []
    answer_ids: list[int] = []  # a completion that ends with an EOS (set by the test)
    filler_id = 0

    def __init__(self, model: str, **kwargs):
        self.folder, self.kwargs = Path(model), kwargs
        with safe_open(str(self.folder / "model.safetensors"), "pt") as f:
            self.started_with = {k: f.get_tensor(k) for k in f.keys()}
        self.model = RecordingModel(list(self.started_with))
        self.calls: list[tuple[list[dict], list[RecordedSamplingParams]]] = []
        self.prefix_resets = 0
        RecordingEngine.made.append(self)

    def apply_model(self, fn):
        return [fn(self.model)]

    def reset_prefix_cache(self):
        self.prefix_resets += 1

    def generate(self, requests, sampling_params, use_tqdm=True):
        self.calls.append((list(requests), list(sampling_params)))
        outs = []
        for params in sampling_params:
            kw, samples = params.kwargs, []
            for j in reversed(range(kw["n"])):  # out of order on purpose: the reader must sort by index
                ids = self.answer_ids if j % 2 == 0 else [self.filler_id] * kw["max_tokens"]  # ended / truncated
                samples.append(SimpleNamespace(
                    index=j, token_ids=list(ids), logprobs=[{t: SimpleNamespace(logprob=-1.0)} for t in ids],
                    finish_reason="stop" if j % 2 == 0 else "length", stop_reason=None))
            outs.append(SimpleNamespace(outputs=samples))
        return outs


RECORDING_VLLM = SimpleNamespace(LLM=RecordingEngine, SamplingParams=RecordedSamplingParams)


def with_recording_engine(module: GRPOPolicy, options: dict | None = None) -> VLLMRollouts:
    tok = module.processor.tokenizer
    RecordingEngine.answer_ids = tok.encode("<answer>A</answer>", add_special_tokens=False) + \
        [tok.convert_tokens_to_ids("<|im_end|>")]
    RecordingEngine.filler_id = tok.encode("A", add_special_tokens=False)[0]
    RecordingEngine.made = []
    module.vllm_rollouts = VLLMRollouts(module.eos_ids.tolist(), module.pad_id, options, vllm_module=RECORDING_VLLM)
    return module.vllm_rollouts


class Snapshots(L.Callback):
    """The policy's pushed-form weights after every optimizer step."""

    def __init__(self):
        self.after_step: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append({n: t.clone() for n, t in policy_weights(pl_module.model)})


def fit(module: GRPOPolicy, steps: int, callbacks=()) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    loader = DataLoader(records(8), batch_size=2, shuffle=True, collate_fn=list)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(module, loader)
    return trainer


def test_grpo_starts_the_engine_from_the_policy_pushes_after_each_step_and_trains_on_its_tokens(shared_cache):
    module = make_policy(shared_cache, lr=1e-2, total_steps=3, temperature=0.9, top_p=0.95)
    engine = with_recording_engine(module, {"gpu_memory_utilization": 0.3, "enforce_eager": True, "dtype": None})
    initial = {n: t.clone() for n, t in policy_weights(module.model)}
    snaps = Snapshots()
    fit(module, steps=3, callbacks=[snaps])

    (llm,) = RecordingEngine.made  # started once, at the start of training
    assert llm.kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert llm.kwargs["gpu_memory_utilization"] == 0.3 and llm.kwargs["enforce_eager"] is True
    assert "dtype" not in llm.kwargs  # null options are vLLM's defaults
    assert set(llm.started_with) == set(initial)
    assert all(torch.equal(llm.started_with[k], initial[k]) for k in initial)

    # 3 rollouts; a push before the 2nd and the 3rd, each carrying the weights of the step just taken.
    pushes = llm.model.pushes
    assert len(llm.calls) == 3 and len(pushes) == 2 and engine.syncs == 2 and llm.prefix_resets == 2
    for push, after in zip(pushes, snaps.after_step[:2], strict=True):
        assert set(push) == set(after) and all(torch.equal(push[k], after[k]) for k in after)
    assert any(not torch.equal(pushes[0][k], initial[k]) for k in initial)  # the policy did move
    assert engine.missing == []

    # What each rollout asked for: the HF path's prompts and sampling settings, a distinct seed per prompt.
    seeds = []
    for requests, params in llm.calls:
        assert len(requests) == len(params) == 2
        for req, p in zip(requests, params, strict=True):
            assert req["prompt"].endswith("<|im_start|>assistant\n") and req["multi_modal_data"]["image"].mode == "RGB"
            kw = p.kwargs
            assert (kw["n"], kw["temperature"], kw["top_p"], kw["max_tokens"]) == (4, 0.9, 0.95, 8)
            assert kw["stop_token_ids"] == module.eos_ids.tolist() and kw["logprobs"] == 0
            # every sampling knob explicit (none from the model folder's generation config); top_k off = -1
            assert (kw["top_k"], kw["repetition_penalty"]) == (-1, 1.0)
            seeds.append(kw["seed"])
    assert len(set(seeds)) == len(seeds)

    # The engine's tokens are what GRPO trained on, group-contiguous: per prompt answer, filler, answer, filler.
    ro = module._buffer
    answer, filler = RecordingEngine.answer_ids, RecordingEngine.filler_id
    assert ro.completion_ids.shape == (8, 8)
    for r in range(8):
        row = ro.completion_ids[r].tolist()
        assert row == (answer + [module.pad_id] * (8 - len(answer)) if r % 2 == 0 else [filler] * 8), r
    assert module.history[-1]["completion_len"] == pytest.approx((len(answer) + 8) / 2)
    assert module.history[-1]["truncated_frac"] == pytest.approx(0.5)
    assert all(math.isfinite(row["vllm_logp_gap"]) for row in module.history)
    assert [("time/weight_sync" in row) for row in module.history] == [False, True, True]
    # Closed at the end of training: the start folder is gone.
    assert engine.llm is None and not llm.folder.exists()


def test_with_num_iterations_the_engine_gets_one_push_per_new_rollout_batch(shared_cache):
    module = make_policy(shared_cache, lr=1e-2, total_steps=4, num_iterations=2)
    engine = with_recording_engine(module)
    fit(module, steps=4)
    (llm,) = RecordingEngine.made
    assert len(llm.calls) == 2 and engine.syncs == 1  # steps 1 and 2 changed the weights; one push before batch 2
    assert [("vllm_logp_gap" in row) for row in module.history] == [True, False, True, False]  # first use only
    # the importance ratio is measured once per rollout batch (at its first use) and its weights kept for the reuse
    assert [("is_ratio_mean" in row) for row in module.history] == [True, False, True, False]


@pytest.mark.parametrize(("delta", "weight"), [(0.2, math.exp(0.2)), (-0.5, math.exp(-0.5)), (1.5, 2.0)])
def test_vllm_rollouts_weight_each_token_by_the_capped_policy_sampler_ratio(shared_cache, delta, weight):
    """A stand-in sampler whose log-probs are the policy's minus ``delta``: every token's loss is weighted by
    min(exp(delta), cap = 2), the ratio's statistics are logged, and switching the correction off drops the weight."""
    module = make_policy(shared_cache, loss_type="bnpo").eval()
    with_recording_engine(module)
    torch.manual_seed(0)
    ro, _ = module.make_rollouts(records(2))
    module.vllm_rollouts.close()
    with torch.no_grad():
        policy, _ = module.completion_logps(module.model, ro)  # (N, Tc)
    mask = ro.completion_mask.bool()
    sampler = torch.where(mask, policy - delta, torch.zeros_like(policy))
    plain = copy.deepcopy(ro)
    ro.sampler_logps = sampler
    loss, stats = module.policy_loss(ro)
    assert torch.allclose(ro.is_weights[mask], torch.full_like(ro.is_weights[mask], weight), rtol=1e-4)
    assert stats["is_ratio_mean"].item() == pytest.approx(math.exp(delta), rel=1e-4)
    assert stats["is_capped_frac"].item() == (1.0 if delta > math.log(2.0) else 0.0)
    assert stats["vllm_logp_gap"].item() == pytest.approx(abs(delta), rel=1e-4)
    # The surrogate is linear in the weights (bnpo, on-policy): the weighted loss is the plain loss times the weight.
    module.cfg = module.cfg.replace(vllm_importance_sampling_correction=False)
    plain.sampler_logps = sampler
    unweighted, off_stats = module.policy_loss(plain)
    assert plain.is_weights is None and "is_ratio_mean" not in off_stats and abs(unweighted.item()) > 1e-6
    assert loss.item() == pytest.approx(weight * unweighted.item(), rel=1e-4, abs=1e-7)
