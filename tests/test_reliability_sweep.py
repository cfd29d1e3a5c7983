"""Reliability: 4 parallel sweep jobs (``hydra/launcher=joblib``) on one fresh MLflow SQLite store, the Gemini
generator against a loopback fake server with a secret API key in the environment — and then a scan of every
byte the sweep wrote for that key. Plus: every ``torch.load`` in the source tree is ``weights_only=True``.

One real sweep serves both checks (it is the expensive part: 4 processes start on a shared 2-core machine).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TEST_OVERRIDES, compose_cfg
from fake_gemini import ITEM, OneItemGemini

pytest.importorskip("google.genai")
pytest.importorskip("hydra_plugins.hydra_joblib_launcher")

SECRET = "sk-test-SECRET123"
SEEDS = (0, 1, 2, 3)  # seeds.pool: each job generates its own candidate pool (the run seed `seed` shares one)
N_SOURCES = 4


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_cache):
    root = tmp_path_factory.mktemp("sweep")
    cache = root / "cache"
    # The jobs' SynthMed source split, built once here: this test is about the MLflow store.
    from medgr2.pipeline.common import load_split

    load_split(compose_cfg(root, cache, "stage=generate"), "train", limit=N_SOURCES)
    fake = OneItemGemini(ITEM)
    env = {**os.environ, "MEDGR2_ROOT": str(root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GEMINI_API_KEY": SECRET}
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
           "cpu_threads=1", *TEST_OVERRIDES, f"paths.cache_dir={cache}", "stage=generate", "generator=gemini",
           f"generator.base_url={fake.url}", "generator.requests_per_minute=null", "generator.max_retries=1",
           f"stage.n_sources={N_SOURCES}", "stage.progress=false", f"seeds.pool={','.join(map(str, SEEDS))}"]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    finally:
        fake.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root, proc, fake


def test_four_parallel_jobs_all_finish_in_one_sqlite_store(sweep):
    import mlflow

    root, proc, fake = sweep
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["medgr2"])
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["params.seeds.pool"].astype(int)) == list(SEEDS)
    assert set(runs["metrics.generate/kept"]) == {float(N_SOURCES)}
    assert len(set(runs["run_id"])) == 4
    assert "database is locked" not in (proc.stdout + proc.stderr).lower()
    assert len(fake.keys) == 4 * N_SOURCES and set(fake.keys) == {SECRET}  # the key was really used ...


def test_the_api_key_is_nowhere_in_what_the_sweep_wrote(sweep):
    root, proc, _ = sweep
    files = [p for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    # ... and the haystack really holds the configs Hydra saved, the store and the logged artifacts.
    assert {"config.yaml", "overrides.yaml", "hydra.yaml", "mlflow.db"} <= names
    assert any("mlruns" in p.parts for p in files) and any(p.suffix == ".parquet" for p in files)
    leaked = [str(p.relative_to(root)) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, f"API key written to {leaked}"
    assert SECRET not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------- torch.load

# torch.load calls that may unpickle more than tensors, each with the reason it is safe. None today.
TORCH_LOAD_ALLOWED: dict[str, str] = {}
_LOAD = re.compile(r"torch\.load\((?P<args>[^()]*(?:\([^()]*\)[^()]*)*)\)")


def test_every_torch_load_in_the_source_tree_is_weights_only():
    sources = [ROOT / "train.py", *(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    found = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for m in _LOAD.finditer(text):
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
            found.append(where)
            if "weights_only=True" not in m.group("args"):
                assert any(where.startswith(k) for k in TORCH_LOAD_ALLOWED), f"{where}: torch.load without " \
                    "weights_only=True unpickles arbitrary objects"
    assert found  # the scan sees the calls (the reward stage's warm start)


def test_our_lightning_checkpoints_load_with_weights_only(make_cfg):
    """Lightning's resume (trainer.fit(ckpt_path=...)) uses torch's default, weights_only=True since torch 2.6:
    our checkpoints must load that way, and the reward warm start (stage.init=<ckpt>) does so explicitly."""
    import torch

    from medgr2.pipeline import run

    cfg = make_cfg("stage=reward", "logger=none", "model.pretrain.enabled=false", "stage.source.size=16",
                   "stage.max_steps=1", "stage.val_every=1", "stage.batch_size=8", "stage.eval_batch_size=16",
                   "stage.val_fraction=0.25", "stage.warmup_steps=0", "checkpoint.every_n_train_steps=1")
    run(cfg)
    ckpts = list(Path(cfg.paths.output_dir).rglob("last.ckpt"))
    assert ckpts
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert state["global_step"] == 1 and state["state_dict"]
    warm = make_cfg("stage=reward", "logger=none", "model.pretrain.enabled=false", "stage.source.size=16",
                    "stage.max_steps=1", "stage.val_every=1", "stage.batch_size=8", "stage.eval_batch_size=16",
                    "stage.val_fraction=0.25", "stage.warmup_steps=0", f"stage.init={ckpts[0]}")
    assert run(warm)
