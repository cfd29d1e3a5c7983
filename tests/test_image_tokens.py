"""Image resolution: ``model.image_size`` gives exactly (side/28)^2 tokens for any input; min/max pixels bound it."""

from __future__ import annotations

import pytest
from PIL import Image

from medgr2.data.collate import ChatCollator
from medgr2.data.synthmed import tokenizer_corpus
from medgr2.models.factory import load_vlm
from medgr2.models.processor import image_tokens, set_resolution, square_side


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return load_vlm({"name": "tiny_vlm", "tiny": {}, "image_size": 56,
                     "cache_dir": str(tmp_path_factory.mktemp("c"))},
                    corpus_fn=tokenizer_corpus)[1]


def _tokens(processor, size: tuple[int, int]) -> int:
    item = {"image": Image.new("RGB", size, (120, 30, 60)), "prompt": "q", "prefix": "", "target": ""}
    batch = ChatCollator(processor, generation=True)([item])
    t, h, w = batch["image_grid_thw"][0].tolist()
    n = int((batch["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n == t * h * w // 4
    return n


@pytest.mark.parametrize("side", [56, 112])
@pytest.mark.parametrize("size", [(300, 300), (640, 480), (480, 640), (56, 56), (2048, 97)])
def test_image_size_gives_exactly_side_over_28_squared_tokens(processor, side, size):
    set_resolution(processor, image_size=side)
    assert _tokens(processor, size) == (side // 28) ** 2


def test_image_size_is_rounded_to_a_multiple_of_28():
    assert square_side(448) == 448 and square_side(450) == 448 and square_side(10) == 28


def test_min_max_pixels_bound_the_tokens_and_keep_the_aspect_ratio(processor):
    set_resolution(processor, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    assert _tokens(processor, (2048, 2048)) == 16  # capped at max_pixels
    assert _tokens(processor, (20, 20)) == 4  # raised to min_pixels
    assert _tokens(processor, (112, 56)) == 8  # in range: 4 x 2 merged patches
    set_resolution(processor, image_size=56)


def test_real_pixel_defaults_give_the_documented_token_counts():
    # The real checkpoints' own preprocessor settings (min 3,136, max 12,845,056 pixels).
    assert image_tokens(448, 448, 3136, 12845056) == 256
    assert image_tokens(2048, 2048, 3136, 12845056) == 5329
    # conf/model/qwen2_5_vl_*.yaml: max_pixels 401,408 caps a 2048x2048 image at 512 tokens
    assert image_tokens(2048, 2048, 50176, 401408) <= 512


def test_min_pixels_above_max_pixels_is_refused(processor):
    with pytest.raises(ValueError, match="min_pixels"):
        set_resolution(processor, min_pixels=10_000, max_pixels=100)
    set_resolution(processor, image_size=56)


def test_sequence_stats_count_image_tokens_per_size_and_the_longest_row(processor):
    from medgr2.data.synthmed import SynthMedConfig, make_item
    from medgr2.pipeline.seq_stats import sequence_stats

    set_resolution(processor, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    recs = [make_item(SynthMedConfig(), "train", i) for i in range(3)]
    recs[0] = {**recs[0], "image": Image.new("RGB", (2048, 2048))}  # capped at 16 tokens
    recs[1] = {**recs[1], "image": Image.new("RGB", (112, 56))}  # 8 tokens
    recs[2] = {**recs[2], "image": "/no/such/image.png"}  # unreadable: counted, left out
    s = sequence_stats(recs, processor, "")
    set_resolution(processor, image_size=56)
    assert s["image_tokens"] == {"min": 8.0, "median": 12.0, "max": 16.0}
    assert s["unreadable_images"] == 1 and s["rows"] == 2
    assert s["longest"]["tokens"] == s["sequence_tokens"]["max"] and s["longest"]["image_tokens"] == 16
    assert s["logits_gb"]["answer_only"] < s["logits_gb"]["full"]


def test_inspect_stage_reports_image_tokens_and_sequence_lengths(make_cfg):
    import json
    from pathlib import Path

    from medgr2.pipeline import run

    cfg = make_cfg("stage=inspect", "logger=none", "stage.seq_rows=20")
    metrics = run(cfg)
    assert metrics["data/image_tokens/min"] == metrics["data/image_tokens/max"] == 4.0  # tiny: 56 px -> 4
    seq = json.loads((Path(cfg.paths.output_dir) / "data_stats.json").read_text())["sequences"]
    assert seq["rows"] == 20 and seq["sequence_tokens"]["max"] == metrics["data/sequence_tokens/max"] > 4
