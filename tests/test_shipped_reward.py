"""The repository ships R_φ^0 of the default config, and it stays that config's.

Once the pretrained base was shipped, training R_φ^0 (800 steps) was most of a first ``make demo`` on 2 cores,
so the package carries it too (``src/medgr2/assets/reward/rm-<key>``). These tests tie the shipped folder to
the config that trains it (its :func:`reward_key`) and to the shipped base it was trained from: when either
moves, they fail and say how to rebuild it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import compose_cfg

import medgr2.pipeline.pretrain as pretrain
import medgr2.pipeline.reward as reward
from medgr2.data.wordnet import WordNetNotFoundError, load_wordnet
from medgr2.modules.reward import HEAD_CONFIG
from medgr2.pipeline import run
from medgr2.pipeline.loop import sub_config
from medgr2.pipeline.reward import (
    SHIPPED_DIR,
    ensure_reward_model,
    find_reward_model,
    reward_key,
    shipped_reward_model,
)

REBUILD = ("rebuild it with `make reward0` (python train.py stage=reward +stage.ship=true; 5-15 min on 2 cores, by "
           "load; after `make base` when the base moved) and commit src/medgr2/assets/reward/")


def _r0_cfg(tmp_path: Path):
    """The default config's R_φ^0 settings, as the loop trains them (stage=reward with the loop's node)."""
    cfg = compose_cfg(tmp_path, tmp_path / "cache", "logger=none", test_size=False)
    return sub_config(cfg, "reward", tmp_path / "reward0")


def _shipped() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.glob("rm-*"))


needs_shipped = pytest.mark.skipif(not _shipped(), reason=f"no R_φ^0 is shipped yet: {REBUILD}")


def test_what_is_shipped_is_the_r0_the_default_config_trains(tmp_path):
    key = reward_key(_r0_cfg(tmp_path))
    assert _shipped() in ([], [f"rm-{key}"]), (
        f"the default config's R_φ^0 has key {key}, but the repository ships {_shipped()}: {REBUILD}")


@needs_shipped
def test_the_shipped_r0_was_trained_from_the_shipped_base(tmp_path):
    cfg = _r0_cfg(tmp_path)
    lineage = json.loads((SHIPPED_DIR / f"rm-{reward_key(cfg)}" / HEAD_CONFIG).read_text())["lineage"]
    base = pretrain.shipped_base(cfg)
    assert base is not None and lineage["base"] == base.name, f"the shipped base moved: {REBUILD}"
    assert lineage["base_sha256"] == reward._sha256(base / "model.safetensors"), f"the shipped base moved: {REBUILD}"


@needs_shipped
def test_the_shipped_r0_is_a_small_complete_export_without_machine_paths_or_run_ids(tmp_path):
    folder = SHIPPED_DIR / f"rm-{reward_key(_r0_cfg(tmp_path))}"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", HEAD_CONFIG, "reward_head.safetensors"} <= names
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 4_000_000, f"the shipped R_φ^0 is {size} bytes; it should stay a few MB"
    meta = json.loads((folder / HEAD_CONFIG).read_text())
    assert meta["lineage"]["generation"] == 0 and meta["lineage"]["parent"] is None
    assert "run_id" not in meta["lineage"] and "cache_dir" not in meta["model"]

    # A path is a quoted string starting at the root (or ~) with a second component; a vocabulary entry such
    # as "/" is not one.
    path = re.compile(r'"~?/[^"\s/]+/')
    for p in folder.iterdir():
        if p.suffix in (".json", ".jinja"):
            found = path.findall(p.read_text())
            assert not found, f"{p.name} holds machine paths: {found[:3]}"


@needs_shipped
def test_the_default_config_uses_the_shipped_r0_and_trains_nothing(tmp_path):
    cfg = _r0_cfg(tmp_path)
    assert ensure_reward_model(cfg) == SHIPPED_DIR / f"rm-{reward_key(cfg)}"
    assert not (tmp_path / "cache" / "reward").exists()
    # The score stage (and select's default pool) finds the same folder.
    score = compose_cfg(tmp_path, tmp_path / "cache", "stage=score", test_size=False)
    assert find_reward_model(score) == SHIPPED_DIR / f"rm-{reward_key(cfg)}"


def test_another_key_or_another_base_does_not_use_the_shipped_r0(tmp_path, monkeypatch):
    other = compose_cfg(tmp_path, tmp_path / "cache", "stage=reward", "stage.lr=0.1", test_size=False)
    assert shipped_reward_model(other) is None
    # Same key, but the base it would start from is not the shipped one (e.g. the shipped base was removed).
    monkeypatch.setattr(pretrain, "SHIPPED_DIR", tmp_path / "no_base")
    assert shipped_reward_model(_r0_cfg(tmp_path)) is None


def test_shipping_an_adapted_model_is_refused_before_any_training(make_cfg, tmp_path):
    cfg = make_cfg("stage=reward", "+stage.ship=true", f"stage.init={tmp_path}", "logger=none")
    with pytest.raises(ValueError, match="ships R_φ\\^0"):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_ship_trains_anew_and_later_runs_use_the_shipped_folder(make_cfg, tmp_path, monkeypatch):
    try:
        load_wordnet()
    except WordNetNotFoundError as exc:  # D_grade needs it; test_wordnet checks the error message
        pytest.skip(str(exc))
    # A shipped base for this test-size config first (R_φ^0 is shipped only on top of a shipped base).
    base_dir, rm_dir = tmp_path / "base", tmp_path / "reward"
    pretrain.ship_base(make_cfg("stage=pretrain", "logger=none"), shipped_dir=base_dir)
    monkeypatch.setattr(pretrain, "SHIPPED_DIR", base_dir)
    monkeypatch.setattr(reward, "SHIPPED_DIR", rm_dir)
    (rm_dir / "rm-stale").mkdir(parents=True)

    cfg = make_cfg("stage=reward", "+stage.ship=true", "stage.source.size=24", "stage.max_steps=2",
                   "stage.val_every=2", "stage.batch_size=8", "stage.eval_batch_size=16", "stage.val_fraction=0.25",
                   "stage.warmup_steps=0", "logger=none")
    run(cfg)
    shipped = rm_dir / f"rm-{reward_key(cfg)}"
    assert sorted(p.name for p in rm_dir.iterdir()) == [shipped.name]
    lineage = json.loads((shipped / HEAD_CONFIG).read_text())["lineage"]
    assert lineage["base"] == pretrain.shipped_base(cfg).name and "run_id" not in lineage
    assert not Path(lineage["train_data"]).is_absolute()
    # The same weights as the run's own export.
    export = Path(cfg.paths.output_dir) / "reward_model"
    assert (shipped / "reward_head.safetensors").read_bytes() == (export / "reward_head.safetensors").read_bytes()

    # A later run of the same settings with a fresh cache takes the shipped folder and trains nothing.
    later = make_cfg("stage=score", "stage.rm.source.size=24", "stage.rm.max_steps=2", "stage.rm.batch_size=8",
                     "stage.rm.val_fraction=0.25", "stage.rm.warmup_steps=0", "logger=none",
                     f"paths.cache_dir={tmp_path / 'fresh_cache'}")
    assert ensure_reward_model(later) == shipped
    assert not (tmp_path / "fresh_cache" / "reward").exists()
