"""RewardScorer's collation (ScoringCollator): the same batches as RewardCollator, so the same scores.

The fast path splices the chat template, tokenizes through the backend, vectorises the pixels of images
already at the processor's size and reuses identical images; every one of those must reproduce the
processor's tensors bit for bit, for odd inputs too, and fall back to the processor when it cannot.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from medgr2.data.collate import MODEL_KEYS
from medgr2.data.grading import GradeConfig, build_graded
from medgr2.data.reward_items import reward_item
from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.modules.reward import RewardRegressor
from medgr2.modules.reward_scorer import RewardScorer
from medgr2.training.reward_collate import RewardCollator
from medgr2.training.scoring_cache import ScoringCache
from medgr2.training.scoring_collate import ScoringCollator

KEYS = (*MODEL_KEYS, "labels")


@pytest.fixture(scope="module")
def module(shared_cache):
    torch.manual_seed(3)
    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)}
    m = RewardRegressor(spec, head_hidden=16, target_mean=2.5, target_std=6.0, pooling="last_mean").eval()
    for p in m.head.parameters():  # a non-constant head, so equal scores mean something
        torch.nn.init.normal_(p, std=0.5)
    return m


@pytest.fixture(scope="module")
def rows():
    records = [make_item(SynthMedConfig(), "train", i) for i in range(12)]
    graded, _ = build_graded(records, GradeConfig(), grades=("original", "deletion", "irrelevant"))
    return graded  # 12 records x 3 grades: each image three times, as separate decoded objects below


def odd_items(rows) -> list[dict]:
    """Items covering every branch: shared and equal-content images, images the processor must resize or
    convert, texts that look like template syntax, empty and tag-less responses, a non-empty prefix."""
    rng = np.random.default_rng(0)
    base = [reward_item(r) for r in rows[:9]]
    shared = base[0]["image"]
    copy = Image.fromarray(np.asarray(shared).copy())  # same pixels, another object
    noise = rng.integers(0, 256, (50, 73, 3), dtype=np.uint8)
    extra = [
        {**base[1], "image": shared},
        {**base[2], "image": copy},
        {**base[3], "image": Image.fromarray(noise)},  # not at the processor's size: resized by it
        {**base[4], "image": Image.fromarray(noise).convert("L")},  # grayscale
        {**base[5], "image": Image.fromarray(rng.integers(0, 256, (56, 56, 4), dtype=np.uint8), "RGBA")},
        {**base[6], "image": Image.fromarray((np.arange(56 * 56).reshape(56, 56) * 20).astype(np.uint16))},
        {**base[7], "image": Image.fromarray(rng.integers(0, 256, (112, 84, 3), dtype=np.uint8))},  # other size
        {**base[8], "prompt": "{{ x }} {% if y %} <b>é 病变</b>\n\n  ", "target": ""},
        {**base[0], "target": "  The answer is B, I think.\n\n"},
        {**base[1], "prefix": "<think>", "target": "short</think><answer>C</answer>"},
    ]
    return base + extra


def same_batch(got: dict, want: dict) -> None:
    for k in KEYS:
        if k in want:
            assert got[k].dtype == want[k].dtype, k
            assert torch.equal(got[k], want[k]), k


def test_every_batch_equals_the_processors_bit_for_bit(module, rows) -> None:
    import copy

    items = odd_items(rows)
    # Without model.image_size's resize-first (ChatCollator.images), so that odd sizes reach the processor's
    # own resize and its cached pixels; with it every image is 56x56 and takes the vectorised path.
    processor = copy.copy(module.processor)
    processor.fixed_image_side = None
    ref = RewardCollator(processor)
    fast = ScoringCollator(processor)
    cache = ScoringCache()
    # The first batch is the self-check (the reference's batch is returned); later ones are the fast path.
    for bs in (4, 5, len(items)):
        for i in range(0, len(items), bs):
            same_batch(fast(items[i:i + bs], cache), ref(items[i:i + bs]))
    assert fast.enabled and fast._checked
    assert fast._fast_sizes[(56, 56)] is True  # SynthMed's images took the vectorised path
    assert fast._fast_sizes[(73, 50)] is False  # the processor resizes this one: its path
    assert cache.hits > 0  # processor-made pixels were reused by later batches
    assert fast._atomic_starts() and "<think>" in fast._atomic_starts()  # responses were tokenized apart


def test_scores_are_unchanged_and_batch_size_invariant(module, rows) -> None:
    items = odd_items(rows) + [reward_item(r) for r in rows]
    scorer = RewardScorer(module, batch_size=8, prefetch=False)
    reference = RewardScorer(module, batch_size=8, prefetch=False)
    reference.collate.enabled = False  # every batch through RewardCollator: the scores before this change
    want = reference.score(items)
    got = scorer.score(items)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5
    assert got == want  # in fact identical: the same tensors go in
    assert max(want) - min(want) > 1e-3
    one = scorer.score(items, batch_size=1)
    assert max(abs(a - b) for a, b in zip(one, got, strict=True)) < 1e-4  # as test_reward_model checks


def test_prefetch_thread_gives_the_same_scores_and_raises_the_same_errors(module, rows) -> None:
    items = [reward_item(r) for r in rows]
    scorer = RewardScorer(module, batch_size=5)
    assert scorer.score(items, prefetch=True) == scorer.score(items, prefetch=False)

    def broken():
        yield from items[:7]
        raise RuntimeError("bad record 7")

    with pytest.raises(RuntimeError, match="bad record 7"):
        scorer.score(broken(), prefetch=True)
    assert scorer.score(items[:3], prefetch=True) == scorer.score(items[:3], prefetch=False)  # still usable


def test_a_fast_path_that_disagrees_falls_back_to_the_processor(module, rows, monkeypatch, caplog) -> None:
    items = [reward_item(r) for r in rows[:6]]
    want = RewardCollator(module.processor)(items[3:])
    fast = ScoringCollator(module.processor)
    real = fast._fast

    def off_by_one(batch_items, cache):
        out = real(batch_items, cache)
        out["input_ids"] = out["input_ids"] + 1
        return out

    monkeypatch.setattr(fast, "_fast", off_by_one)
    with caplog.at_level(logging.WARNING, logger="medgr2.training.scoring_collate"):
        fast(items[:3])
    assert not fast.enabled and "does not reproduce" in caplog.text
    same_batch(fast(items[3:]), want)


def test_a_template_that_is_not_a_splice_disables_the_fast_path(module, rows) -> None:
    fast = ScoringCollator(module.processor)
    fast.reference.chat.prompt_text = lambda item: f"<|im_start|>user\n{item['prompt'].upper()}<|im_end|>\n"
    assert fast._template_parts() is None


def test_text_holding_an_image_placeholder_goes_through_the_processor(module, rows) -> None:
    item = {**reward_item(rows[0]), "target": "see <|image_pad|> here"}
    fast = ScoringCollator(module.processor)
    assert not fast._plain([item])
    with pytest.raises(ValueError, match="image"):  # the processor's own complaint, as before
        fast([item])


def test_the_call_cache_is_bounded() -> None:
    cache = ScoringCache(max_bytes=3 * 404, max_prompts=2)
    for i in range(5):
        cache.put(((1, 1), bytes([i]) * 4), torch.zeros(100), (1, 1, 1))  # 400 bytes + a 4-byte key each
    assert cache.get(((1, 1), bytes([0]) * 4)) is None and cache.get(((1, 1), bytes([4]) * 4)) is not None
    assert cache._bytes <= 3 * 404 and len(cache.pixels) == 3
    big = torch.zeros(1000)
    cache.put(((1, 1), b"view"), big[:100], (1, 1, 1))  # a view is copied, so it does not pin the 4 kB tensor
    assert cache.get(((1, 1), b"view"))[0].untyped_storage().nbytes() == 400
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return [[len(t)] for t in texts]

    assert cache.prompt_ids(["a", "bb", "a"], encode) == [[1], [2], [1]]
    assert cache.prompt_ids(["bb", "ccc"], encode) == [[2], [3]]
    assert calls == [["a", "bb"], ["ccc"]] and list(cache.prompts) == ["bb", "ccc"]  # each text once; LRU of 2
