"""The answer letter's position and the option tokens come from character offsets, under any tokenizer."""

from __future__ import annotations

import pytest
import real_layout
import torch

from medgr2.data.collate import IGNORE, ChatCollator, letter_slot, vqa_item
from medgr2.data.synthmed import SynthMedConfig, make_item, tokenizer_corpus
from medgr2.models.factory import load_vlm
from medgr2.models.processor import torchvision_available
from medgr2.rl.lm_loss import answer_nll, answer_window, letter_stats

needs_real = pytest.mark.skipif(not real_layout.available(), reason=real_layout.SKIP_REASON)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_vlm({"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(tmp_path_factory.mktemp("c"))},
                    corpus_fn=tokenizer_corpus)


@pytest.fixture(scope="module")
def real_processor():
    if not real_layout.available():
        pytest.skip(real_layout.SKIP_REASON)
    from medgr2.models.processor import load_processor

    return load_processor(str(real_layout.REAL_ROOT / "Qwen2.5-VL-7B-Instruct"))


@needs_real
def test_real_tokenizer_merges_the_letter_with_the_tag_and_the_slot_still_finds_it(real_processor):
    tok = real_processor.tokenizer
    assert tok.convert_tokens_to_ids("<answer>") in (None, tok.unk_token_id)  # no tag token in Qwen's vocabulary
    k, ids = letter_slot(tok, "<think>red</think><answer>B</answer><|im_end|>")
    toks = tok.convert_ids_to_tokens(tok.encode("<think>red</think><answer>B</answer>", add_special_tokens=False))
    assert toks[k] == ">B"
    assert tok.convert_ids_to_tokens(ids) == [">A", ">B", ">C", ">D"]


def test_tiny_tokenizer_keeps_the_letter_as_its_own_token(tiny):
    tok = tiny[1].tokenizer
    k, ids = letter_slot(tok, "<think>red</think><answer>C</answer>")
    assert tok.convert_ids_to_tokens(ids) == ["A", "B", "C", "D"]
    assert tok.decode(tok.encode("<think>red</think><answer>C</answer>", add_special_tokens=False)[k - 1]) == "<answer>"


def test_text_without_an_answer_letter_has_no_slot(tiny):
    assert letter_slot(tiny[1].tokenizer, "<answer>maybe</answer>") is None
    assert letter_slot(tiny[1].tokenizer, "no tag here") is None


@needs_real
def test_real_tokenizer_labels_and_letter_metrics_are_found_in_a_batch(real_processor):
    recs = [make_item(SynthMedConfig(), "train", i) for i in range(4)]
    batch = ChatCollator(real_processor)([vqa_item(r, "") for r in recs])
    tok = real_processor.tokenizer
    for i, r in enumerate(recs):
        labelled = tok.decode(batch["labels"][i][batch["labels"][i] != IGNORE])
        assert labelled == f"<think>{r['rationale']}</think><answer>{r['answer']}</answer><|im_end|>"
        assert tok.decode(batch["input_ids"][i, int(batch["letter_pos"][i])]) == ">" + r["answer"]
    # Letter metrics are defined (not NaN) for the real tokenizer: the gold letter's token is among the options.
    V = len(tok)
    logits = torch.zeros(4, batch["input_ids"].shape[1], V)
    stats = letter_stats(logits, batch["input_ids"], batch["letter_pos"], batch["letter_ids"])
    assert abs(stats["letter_loss"].item() - torch.log(torch.tensor(4.0)).item()) < 1e-5


def test_answer_window_logits_give_the_same_losses_as_full_logits(tiny):
    from medgr2.modules.sft import sft_forward

    model, processor = tiny
    recs = [make_item(SynthMedConfig(), "train", i) for i in range(3)]
    batch = ChatCollator(processor)([vqa_item(r, "") for r in recs])
    with torch.no_grad():
        full, ftail, foff = sft_forward(model, batch, answer_only=False)
        part, ptail, poff = sft_forward(model, batch, answer_only=True)
    assert foff == 0 and part.shape[1] == answer_window(batch["labels"]) < full.shape[1]
    torch.testing.assert_close(answer_nll(part, ptail["labels"]), answer_nll(full, ftail["labels"]))
    a = letter_stats(full, ftail["input_ids"], ftail["letter_pos"], ftail["letter_ids"])
    b = letter_stats(part, ptail["input_ids"], ptail["letter_pos"], ptail["letter_ids"])
    torch.testing.assert_close(a["letter_loss"], b["letter_loss"])
    assert not torch.isnan(a["letter_loss"])


@needs_real
@pytest.mark.skipif(not torchvision_available(),
                    reason="torchvision not installed (CPU wheel): transformers' own processor cannot be built")
def test_transformers_processor_and_the_image_only_one_give_the_same_inputs(real_processor):
    from PIL import Image
    from transformers import AutoProcessor

    from medgr2.models.processor import ImageOnlyQwen2_5_VLProcessor, set_resolution

    path = str(real_layout.REAL_ROOT / "Qwen2.5-VL-7B-Instruct")
    ours, theirs = ImageOnlyQwen2_5_VLProcessor.from_pretrained(path), AutoProcessor.from_pretrained(path)
    for p in (ours, theirs):
        set_resolution(p, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    img = Image.effect_mandelbrot((300, 200), (-2, -1, 1, 1), 60).convert("RGB")
    text = "<|vision_start|><|image_pad|><|vision_end|>What is shown?"
    a = ours(text=[text], images=[img], return_tensors="pt")
    b = theirs(text=[text], images=[img], return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["image_grid_thw"], b["image_grid_thw"])
    torch.testing.assert_close(a["pixel_values"].float(), b["pixel_values"].float(), atol=0.05, rtol=0)


@needs_real
def test_a_response_starting_with_newlines_is_labelled_although_qwen_merges_it_with_the_prompt(real_processor):
    # Random or early policies often start with "\n": Qwen merges it with the prompt's final newline.
    rec = make_item(SynthMedConfig(), "train", 0)
    item = {"image": rec["image"], "prompt": "q?", "prefix": "", "target": "\n\nIt is <answer>B</answer>"}
    batch = ChatCollator(real_processor)([item, {**item, "target": "<answer>C</answer>"}])
    tok = real_processor.tokenizer
    labelled = tok.decode(batch["labels"][0][batch["labels"][0] != IGNORE])
    assert labelled.endswith("\n\nIt is <answer>B</answer><|im_end|>") and labelled.count("\n") <= 3
    assert tok.decode(batch["input_ids"][0, int(batch["letter_pos"][0])]) == ">B"
    assert tok.decode(batch["input_ids"][1, int(batch["letter_pos"][1])]) == ">C"
