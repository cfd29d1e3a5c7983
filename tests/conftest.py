"""Shared test helpers: compose the real Hydra config at test size, a session-wide cache of built assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

import medgr2  # noqa: F401  (registers resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small everything: a full stage runs in seconds on 2 cores.
TEST_OVERRIDES = [
    "data.n_pretrain=256",
    "data.n_train=256",
    "data.n_val=32",
    "data.n_test=40",
    "model.pretrain.steps=4",
    "model.pretrain.n_items=128",
    "model.pretrain.batch_size=8",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "evaluate.batch_size=16",
    "evaluate.max_new_tokens=24",
    "print_config=false",
]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache folder per test session: the tiny model and SynthMed splits are built once."""
    return tmp_path_factory.mktemp("medgr2_cache")


def compose_cfg(root: Path, cache: Path, *overrides: str, test_size: bool = True) -> DictConfig:
    """The real composed config with paths under ``root`` and the shared ``cache``."""
    over = list(TEST_OVERRIDES if test_size else []) + [
        f"paths.root={root}",
        f"paths.cache_dir={cache}",
        f"paths.output_dir={root / 'out'}",
        *overrides,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=over)
    with open_dict(cfg):
        OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path, shared_cache):
    """``make_cfg("stage=sft", "stage.max_steps=3")`` -> composed test-size config in a fresh root."""

    def _make(*overrides: str, test_size: bool = True) -> DictConfig:
        return compose_cfg(tmp_path, shared_cache, *overrides, test_size=test_size)

    return _make


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test process: the tiny model's ops are microseconds, and on a shared 2-core
    machine two OpenMP threads per process spin against other load (measured ~10x slower steps)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Belt and braces: nothing in the suite may reach a hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
