"""Evaluation decodes greedily whatever the checkpoint's generation_config.json says."""

from __future__ import annotations

import pytest
import torch

from medgr2.data.collate import ChatCollator, model_inputs
from medgr2.data.prompting import chat_item
from medgr2.data.synthmed import SynthMedConfig, make_item, tokenizer_corpus
from medgr2.evaluation.evaluate import predict
from medgr2.models.decoding import GREEDY, as_params, sampling
from medgr2.models.factory import load_vlm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_vlm({"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(tmp_path_factory.mktemp("c"))},
                    corpus_fn=tokenizer_corpus)


def _set_checkpoint_config(model, penalty: float) -> None:
    # What the real Qwen2.5-VL generation_config.json holds (do_sample, tiny temperature, a penalty).
    gc = model.generation_config
    gc.do_sample, gc.temperature, gc.repetition_penalty = True, 1e-6, penalty


def test_predictions_ignore_the_checkpoints_repetition_penalty_and_sampling(tiny):
    model, processor = tiny
    rows = [make_item(SynthMedConfig(), "test", i) for i in range(4)]
    outs = {}
    for penalty in (1.0, 1.05, 3.0):
        _set_checkpoint_config(model, penalty)
        preds = predict(model, processor, rows, batch_size=4, max_new_tokens=16, progress=False)
        outs[penalty] = [(p["completion"], p["option_probs"]) for p in preds]
    assert outs[1.0] == outs[1.05] == outs[3.0]


def test_the_checkpoint_penalty_would_change_a_plain_do_sample_false_generate(tiny):
    # The control: passing only do_sample=False leaves the checkpoint's penalty active.
    model, processor = tiny
    rows = [make_item(SynthMedConfig(), "test", i) for i in range(4)]
    batch = ChatCollator(processor, generation=True)([chat_item(r, "") for r in rows])
    seqs = {}
    for penalty in (1.0, 3.0):
        _set_checkpoint_config(model, penalty)
        seqs[penalty] = model.generate(**model_inputs(batch), max_new_tokens=16, do_sample=False)
    explicit = model.generate(**model_inputs(batch), max_new_tokens=16, **GREEDY)
    _set_checkpoint_config(model, 1.0)
    assert not torch.equal(seqs[1.0], seqs[3.0])
    assert torch.equal(explicit, seqs[1.0])


def test_decoding_settings_are_explicit_and_flatten_to_params():
    s = sampling(0.7, top_p=None, top_k=None)
    assert s == {"do_sample": True, "num_beams": 1, "temperature": 0.7, "top_p": 1.0, "top_k": 0,
                 "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    assert as_params(GREEDY, "decoding/evaluate")["decoding/evaluate/repetition_penalty"] == "1.0"
