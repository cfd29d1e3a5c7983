"""The embedded tiny Qwen2.5-VL: real classes, offline, same from_pretrained path as hub checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from medgr2.data.collate import ChatCollator, model_inputs, vqa_item
from medgr2.data.synthmed import SynthMedConfig, make_item, tokenizer_corpus
from medgr2.models.factory import ModelSpec, load_vlm, resolve_model_path
from medgr2.models.tiny import TinyQwen2_5_VLProcessor

SPEC = {"name": "tiny_vlm", "tiny": {}, "image_size": 56}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny")
    model, processor = load_vlm({**SPEC, "cache_dir": str(cache)}, corpus_fn=tokenizer_corpus)
    return model, processor, cache


@pytest.fixture(scope="module")
def batch(tiny):
    _, processor, _ = tiny
    items = [vqa_item(make_item(SynthMedConfig(), "train", i), "") for i in range(4)]
    return ChatCollator(processor)(items)


def test_round_trip_loads_real_classes_and_a_processor_with_images(tiny):
    model, processor, cache = tiny
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    # Without the AutoProcessor registration a bare tokenizer comes back and images are silently dropped.
    assert isinstance(processor, TinyQwen2_5_VLProcessor)
    assert processor.image_processor is not None
    path = resolve_model_path(ModelSpec.from_config({**SPEC, "cache_dir": str(cache)}), tokenizer_corpus)
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    for (n1, p1), (_, p2) in zip(model.named_parameters(), reloaded.named_parameters(), strict=True):
        assert torch.equal(p1, p2), n1


def test_building_the_tiny_model_is_deterministic(tmp_path):
    a, _ = load_vlm({**SPEC, "cache_dir": str(tmp_path / "a")}, corpus_fn=tokenizer_corpus)
    b, _ = load_vlm({**SPEC, "cache_dir": str(tmp_path / "b")}, corpus_fn=tokenizer_corpus)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_pixel_values_reach_the_vision_tower_and_change_the_output(tiny, batch):
    model, _, _ = tiny
    assert batch["pixel_values"].shape == (4 * 16, 3 * 2 * 14 * 14)  # 4 images x 16 patches of 14 px
    seen = {}

    def hook(module, args, output):
        seen["n"] = args[0].shape[0]  # returns None: the output is left as it is

    handle = model.model.visual.register_forward_hook(hook)
    with torch.no_grad():
        out1 = model(**model_inputs(batch)).logits
        inputs = model_inputs(batch)
        inputs["pixel_values"] = torch.zeros_like(inputs["pixel_values"])
        out2 = model(**inputs).logits
    handle.remove()
    assert seen["n"] == 64
    assert not torch.allclose(out1, out2)


def test_forward_backward_and_generate_with_an_image(tiny, batch):
    model, processor, _ = tiny
    model.train()
    out = model(**model_inputs(batch), labels=batch["labels"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.model.visual.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()
    gen = ChatCollator(processor, generation=True)(
        [{**vqa_item(make_item(SynthMedConfig(), "test", 0), ""), "target": ""}]
    )
    seq = model.generate(**model_inputs(gen), max_new_tokens=5, do_sample=False)
    assert seq.shape[1] == gen["input_ids"].shape[1] + 5 or seq.shape[1] < gen["input_ids"].shape[1] + 5


def test_lora_trains_only_the_adapters(tiny, batch):
    _, _, cache = tiny
    model, _ = load_vlm({**SPEC, "cache_dir": str(cache), "lora": {"enabled": True, "r": 4, "alpha": 8}},
                        corpus_fn=tokenizer_corpus)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_four_bit_on_cpu_fails_with_a_clear_message(tiny):
    _, _, cache = tiny
    if torch.cuda.is_available():
        pytest.skip("4-bit is allowed on GPU")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        load_vlm({**SPEC, "cache_dir": str(cache), "quantization": "4bit"}, corpus_fn=tokenizer_corpus)


def test_rope_sections_follow_the_head_size_and_a_wrong_one_is_a_clear_error():
    from medgr2.models.tiny import TinyVLMSpec

    assert TinyVLMSpec().rope_sections() == [2, 3, 3]  # head_dim 16
    assert sum(TinyVLMSpec(hidden_size=96).rope_sections()) == 12
    with pytest.raises(ValueError, match="must sum to head_dim/2 = 12"):
        TinyVLMSpec(hidden_size=96, mrope_section=[2, 3, 3]).rope_sections()


def test_the_factory_needs_the_tiny_tokenizer_corpus_from_its_caller(tmp_path):
    # models/ knows no data set: without a corpus it says what to pass instead of building something else.
    with pytest.raises(ValueError, match=r"pass its tokenizer corpus \(corpus_fn=") as err:
        resolve_model_path(ModelSpec.from_config({**SPEC, "cache_dir": str(tmp_path)}))
    assert "\n" not in str(err.value) and not any(tmp_path.iterdir())
