"""Image resolution: ``model.image_size`` gives exactly (side/28)^2 tokens for any input; min/max pixels bound it."""

from __future__ import annotations

import pytest
from PIL import Image

from medgr2.data.collate import ChatCollator
from medgr2.models.factory import load_vlm
from medgr2.models.processor import image_tokens, set_resolution, square_side


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return load_vlm({"name": "tiny_vlm", "tiny": {}, "image_size": 56,
                     "cache_dir": str(tmp_path_factory.mktemp("c"))})[1]


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
