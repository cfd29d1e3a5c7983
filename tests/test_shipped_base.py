"""The repository ships the tiny model's pretrained base of the default config, and it stays that config's.

Pretraining the base takes ~15 of a first ``make demo``'s ~20 minutes on 2 cores, so the package carries it
(``src/medgr2/assets/base/pretrained-<key>``). These tests tie the shipped folder to the config that makes it:
when the default config's :func:`base_key` or the tiny tokenizer's corpus moves, they fail and say how to
rebuild it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_cfg

from medgr2.pipeline.pretrain import SHIPPED_DIR, base_key, base_weights, ship_base, shipped_base

REBUILD = ("rebuild it with `make base` (python train.py stage=pretrain stage.ship=true; 15-50 min on 2 cores, by load) "
           "and commit src/medgr2/assets/base/")


def _default_cfg(tmp_path: Path):
    return compose_cfg(tmp_path, tmp_path / "cache", "logger=none", test_size=False)


def _shipped() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.glob("pretrained-*"))


# Without a shipped folder the default config pretrains into the cache (correct, only slow): the tests that
# check the shipped folder itself say so instead of failing. A shipped folder with another key fails.
needs_shipped = pytest.mark.skipif(not _shipped(), reason=f"no pretrained base is shipped yet: {REBUILD}")


def test_what_is_shipped_is_the_base_the_default_config_builds(tmp_path):
    key = base_key(_default_cfg(tmp_path))
    shipped = _shipped()
    assert shipped in ([], [f"pretrained-{key}"]), (
        f"the default config's pretrained base has key {key}, but the repository ships {shipped}: {REBUILD}")


@needs_shipped
def test_the_shipped_folder_is_a_complete_small_export(tmp_path):
    cfg = _default_cfg(tmp_path)
    key = base_key(cfg)
    folder = SHIPPED_DIR / f"pretrained-{key}"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 4_000_000, f"the shipped base is {size} bytes; it should stay a few MB"


@needs_shipped
def test_the_default_config_uses_the_shipped_base_and_pretrains_nothing(tmp_path):
    cfg = _default_cfg(tmp_path)
    assert base_weights(cfg) == str(SHIPPED_DIR / f"pretrained-{base_key(cfg)}")
    assert not (tmp_path / "cache" / "base").exists()


def test_a_config_with_another_key_does_not_use_the_shipped_base(tmp_path):
    cfg = compose_cfg(tmp_path, tmp_path / "cache", "model.pretrain.steps=4999", test_size=False)
    assert shipped_base(cfg) is None


@needs_shipped
def test_the_shipped_tokenizer_is_the_one_the_current_corpus_trains(tmp_path):
    # The base key covers the configs, not the code that writes the tokenizer's corpus (prompting texts,
    # rationales): a change there must be caught here, not show up as a silently different vocabulary.
    from transformers import AutoTokenizer

    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.tiny import train_tokenizer

    cfg = _default_cfg(tmp_path)
    shipped = AutoTokenizer.from_pretrained(str(SHIPPED_DIR / f"pretrained-{base_key(cfg)}"))
    fresh = train_tokenizer(tokenizer_corpus(), int(cfg.model.tiny.vocab_size))
    assert shipped.get_vocab() == fresh.get_vocab(), f"the tiny tokenizer's corpus changed: {REBUILD}"


def test_the_tokenizer_corpus_and_its_training_are_the_same_in_every_process():
    # Two interpreters with different hash seeds (set/dict order) must build the same tokenizer, or the
    # tiny model's cache key and the shipped base would depend on the process that built them.
    code = ("import hashlib; from medgr2.data.synthmed import tokenizer_corpus; "
            "from medgr2.models.tiny import train_tokenizer; c = tokenizer_corpus(n=500); "
            "t = train_tokenizer(c, 512); "
            "print(hashlib.sha256(repr(c).encode()).hexdigest(), "
            "hashlib.sha256(t.backend_tokenizer.to_str().encode()).hexdigest())")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(res.stdout.split())
    assert outs[0] == outs[1]


def test_ship_base_pretrains_anew_and_later_runs_use_the_shipped_folder(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("stage=pretrain", "stage.ship=true", "logger=none")
    dest = tmp_path / "shipped"
    (dest / "pretrained-stale").mkdir(parents=True)
    path = ship_base(cfg, shipped_dir=dest)
    assert path == dest / f"pretrained-{base_key(cfg)}"
    assert sorted(p.name for p in dest.iterdir()) == [path.name]
    assert shipped_base(cfg, shipped_dir=dest) == path
    # Trained weights, not the random init of the tiny model it starts from.
    from safetensors.torch import load_file

    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import ModelSpec, resolve_model_path

    init = load_file(str(Path(resolve_model_path(ModelSpec.from_config(cfg.model), tokenizer_corpus)) / "model.safetensors"))
    trained = load_file(str(path / "model.safetensors"))
    assert init.keys() == trained.keys()
    assert any(not init[k].equal(trained[k]) for k in init)

    # A later run of the same config (fresh cache) takes the shipped folder and pretrains nothing.
    import medgr2.pipeline.pretrain as pretrain

    monkeypatch.setattr(pretrain, "SHIPPED_DIR", dest)
    later = make_cfg("stage=sft", "logger=none", "paths.cache_dir=" + str(tmp_path / "fresh_cache"))
    assert base_weights(later) == str(path)
    assert not (tmp_path / "fresh_cache" / "base").exists()
