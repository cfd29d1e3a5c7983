"""Local backends: HFBackend against a duck-typed fake VLM (the real tiny model is tested by the models
package), and the clear error when vLLM is missing."""

from __future__ import annotations

import importlib.util
import json

import pytest
from generation_fixtures import toy_sources

from medgr2.generation import make_backend, parse_candidate, plan_requests

torch = pytest.importorskip("torch")

from medgr2.generation.local import HFBackend  # noqa: E402
from medgr2.utils.optional import VLLM_HINT, VLLMNotInstalledError  # noqa: E402

PAD = 0


class FakeTokenizer:
    pad_token_id = PAD

    def __init__(self):
        self.padding_side = "right"

    def batch_decode(self, ids, skip_special_tokens=True):
        return [
            "".join(chr(int(t)) for t in row if not (skip_special_tokens and int(t) == PAD)) for row in ids
        ]


class FakeProcessor:
    """Tokenises characters; records the padding side it was called with."""

    def __init__(self):
        self.tokenizer = FakeTokenizer()
        self.sides: list[str] = []

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        content = messages[0]["content"]
        assert content[0] == {"type": "image"} and content[1]["type"] == "text"
        return "<img>" + content[1]["text"][:40] + "<assistant>"

    def __call__(self, text, images, return_tensors, padding):
        assert len(text) == len(images) and return_tensors == "pt" and padding
        self.sides.append(self.tokenizer.padding_side)
        ids = [[ord(c) for c in t] for t in text]
        width = max(map(len, ids))
        left = self.tokenizer.padding_side == "left"
        rows = [([PAD] * (width - len(r)) + r) if left else (r + [PAD] * (width - len(r))) for r in ids]
        mask = [[int(t != PAD) for t in r] for r in rows]
        pixels = torch.stack(
            [torch.tensor(list(img.getdata()), dtype=torch.float32).mean() for img in images]
        )
        return {"input_ids": torch.tensor(rows), "attention_mask": torch.tensor(mask), "pixel_values": pixels}

    def batch_decode(self, ids, skip_special_tokens=True):
        return self.tokenizer.batch_decode(ids, skip_special_tokens)


class FakeVLM(torch.nn.Module):
    """Answers each row with the JSON item of the toy source whose image mean it was given."""

    def __init__(self, answers_by_pixel_mean):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.answers = answers_by_pixel_mean
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, pixel_values, **kw):
        self.calls.append(kw)
        texts = [self.answers[round(float(p), 3)] for p in pixel_values]
        width = max(map(len, texts))
        new = [[ord(c) for c in t] + [PAD] * (width - len(t)) for t in texts]
        return torch.cat([input_ids, torch.tensor(new)], dim=1)


def _item(src):
    return json.dumps({k: src[k] for k in ("question", "options", "answer", "rationale", "question_type")})


def test_hf_backend_batches_left_pads_and_decodes_only_new_tokens():
    sources = toy_sources(5, seed=2)
    answers = {
        round(
            float(torch.tensor(list(s["image"].convert("RGB").getdata()), dtype=torch.float32).mean()), 3
        ): _item(s)
        for s in sources
    }
    assert len(answers) == len(sources)
    proc, model = FakeProcessor(), FakeVLM(answers)
    backend = HFBackend(model, proc, batch_size=2, max_new_tokens=64, temperature=0.7, model_name="tiny")
    requests = plan_requests(sources, "direct")
    results = backend.generate(requests)
    assert [r.error for r in results] == [None] * 5
    for req, res in zip(requests, results, strict=True):
        rec = parse_candidate(
            res.text,
            req.source,
            backend=backend.name,
            model=backend.model,
            prompt="direct",
            iteration=0,
            seed=0,
        )
        assert rec["question"] == req.source["question"] and rec["answer"] == req.source["answer"]
    assert proc.sides == ["left"] * 3 and proc.tokenizer.padding_side == "right"  # restored afterwards
    assert model.calls[0]["max_new_tokens"] == 64 and model.calls[0]["temperature"] == 0.7
    assert model.calls[0]["pad_token_id"] == PAD


def test_hf_backend_isolates_a_failing_request():
    sources = toy_sources(3, seed=2)
    broken = dict(sources[1], image=None)
    answers = {
        round(float(torch.tensor(list(s["image"].getdata()), dtype=torch.float32).mean()), 3): _item(s)
        for s in (sources[0], sources[2])
    }
    backend = HFBackend(FakeVLM(answers), FakeProcessor(), batch_size=3)
    results = backend.generate(plan_requests([sources[0], broken, sources[2]], "direct"))
    assert [r.error for r in results] == [None, "exception", None]
    assert "no image" in results[1].detail


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_gives_a_clear_install_hint():
    with pytest.raises(ImportError) as err:
        make_backend("vllm", model="Qwen/Qwen2.5-VL-3B-Instruct")
    assert isinstance(err.value, VLLMNotInstalledError)
    assert "pip install medgr2[vllm]" in str(err.value) and "GPU" in str(err.value)
    assert str(err.value) == VLLM_HINT


def test_hf_backend_with_the_tiny_qwen_vlm(tmp_path):
    """The real processor/model path: chat template, image tokens, left padding, greedy batch == single."""
    factory = pytest.importorskip("medgr2.models.factory")
    tiny = pytest.importorskip("medgr2.models.tiny")
    spec = factory.ModelSpec(tiny=tiny.TinyVLMSpec(), cache_dir=str(tmp_path))
    corpus = [
        '{"question": "Which modality?", "options": ["CT", "MRI"], "answer": "A", "rationale": "x"}'
    ] * 4
    model, processor = factory.load_vlm(spec, corpus_fn=lambda: corpus)
    requests = plan_requests(toy_sources(3, seed=4), "metacognitive")  # different prompt lengths -> padding
    batched = HFBackend(model, processor, batch_size=3, do_sample=False, max_new_tokens=6).generate(requests)
    single = HFBackend(model, processor, batch_size=1, do_sample=False, max_new_tokens=6).generate(requests)
    assert [r.error for r in batched] == [None] * 3, [r.detail for r in batched]
    assert [r.text for r in batched] == [r.text for r in single]
