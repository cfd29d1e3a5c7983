"""The collator labels only the assistant's target and finds the answer-letter token."""

from __future__ import annotations

import pytest

from medgr2.data.collate import IGNORE, ChatCollator, vqa_item
from medgr2.data.synthmed import SynthMedConfig, make_item, tokenizer_corpus
from medgr2.models.factory import load_vlm


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    _, proc = load_vlm({"name": "tiny_vlm", "tiny": {}, "image_size": 56,
                        "cache_dir": str(tmp_path_factory.mktemp("c"))}, corpus_fn=tokenizer_corpus)
    return proc


def test_labels_cover_exactly_the_target_and_the_end_token(processor):
    recs = [make_item(SynthMedConfig(), "train", i) for i in range(3)]
    batch = ChatCollator(processor)([vqa_item(r, "") for r in recs])
    tok = processor.tokenizer
    for i, r in enumerate(recs):
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE]
        assert tok.decode(labelled) == f"<think>{r['rationale']}</think><answer>{r['answer']}</answer><|im_end|>"


def test_letter_position_points_at_the_answer_letter(processor):
    recs = [make_item(SynthMedConfig(), "train", i) for i in range(5)]
    batch = ChatCollator(processor)([vqa_item(r, "", think=False) for r in recs])
    tok = processor.tokenizer
    for i, r in enumerate(recs):
        pos = int(batch["letter_pos"][i])
        assert tok.decode(batch["input_ids"][i, pos]) == r["answer"]
        assert tok.decode(batch["input_ids"][i, pos - 1]) == "<answer>"


def test_a_prefix_is_context_not_a_target(processor):
    rec = make_item(SynthMedConfig(), "train", 1)
    item = {"image": rec["image"], "prompt": "q", "prefix": "<think>given</think>", "target": "<answer>B</answer>"}
    batch = ChatCollator(processor)([item])
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE]
    assert processor.tokenizer.decode(labelled) == "<answer>B</answer><|im_end|>"


def test_grayscale_rgba_and_16_bit_images_are_converted(processor):
    import numpy as np
    from PIL import Image

    rec = make_item(SynthMedConfig(), "train", 0)
    imgs = [rec["image"].convert("L"), rec["image"].convert("RGBA"),
            Image.fromarray((np.arange(56 * 56).reshape(56, 56) * 20).astype(np.uint16))]
    batch = ChatCollator(processor)([{**vqa_item(rec, ""), "image": im} for im in imgs])
    assert batch["pixel_values"].shape[0] == 3 * 16


@pytest.mark.parametrize("style", ["verify", "answer"])
def test_pretraining_option_reading_labels_the_conclusion_and_letter_only(processor, style):
    from medgr2.data.prompting import split_rationale
    from medgr2.pipeline.pretrain import pretrain_item

    cfg = SynthMedConfig(rationale=style)
    recs = [make_item(cfg, "pretrain", i) for i in (1, 3, 5, 7, 9)]  # odd indices: option-reading items
    batch = ChatCollator(processor)([pretrain_item(r) for r in recs])
    tok = processor.tokenizer
    for i, r in enumerate(recs):
        labelled = tok.decode(batch["labels"][i][batch["labels"][i] != IGNORE])
        conclusion = split_rationale(r["rationale"])[1] if style == "verify" else ""
        assert labelled == f"{conclusion}</think><answer>{r['answer']}</answer><|im_end|>"
        assert tok.decode(batch["input_ids"][i, int(batch["letter_pos"][i])]) == r["answer"]
