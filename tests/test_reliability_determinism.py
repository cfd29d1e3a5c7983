"""Reliability: the same seed gives the same SynthMed bytes and the same TopK / RandK selection in separate
processes (different ``PYTHONHASHSEED``, so nothing may depend on ``hash()`` or set order), and two tiny CPU
SFT runs give exactly the same test metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from medgr2.pipeline import run

# Builds a SynthMed split through the cached on-disk path, selects from it, prints digests as JSON.
_SCRIPT = r"""
import hashlib, json, sys
from pathlib import Path
import numpy as np
from medgr2.data.synthmed import SynthMedConfig, load_synthmed
from medgr2.data.selection import select_ids

seed, cache = int(sys.argv[1]), Path(sys.argv[2])
ds = load_synthmed(SynthMedConfig(seed=seed), "train", cache, n=48)
h = hashlib.sha256()
for row in ds:
    h.update(json.dumps({k: v for k, v in row.items() if k != "image"}, sort_keys=True).encode())
    h.update(np.asarray(row["image"]).tobytes())
arrow = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.rglob("*.arrow"))}
pool = ds.add_column("score", [float((i * 37) % 23) / 2 - 6 for i in range(len(ds))])  # ties on purpose
print(json.dumps({
    "records": h.hexdigest(), "arrow": arrow,
    "topk": select_ids(pool, "topk", k=10, allow_overlap=False),
    "randk": select_ids(pool, "randk", k=10, seed=seed, allow_overlap=False),
    "threshold": select_ids(pool, "threshold", tau=2.0, allow_overlap=False),
}))
"""


def _digests(tmp_path: Path, seed: int, hash_seed: str, name: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(seed), str(tmp_path / name)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_same_seed_same_synthmed_bytes_and_same_selection_across_processes(tmp_path):
    a = _digests(tmp_path, 0, "1", "a")
    b = _digests(tmp_path, 0, "987", "b")
    assert a == b  # record content, pixels, the cached Arrow files and every selection
    assert a["arrow"] and len(a["topk"]) == len(a["randk"]) == 10 and a["threshold"]
    c = _digests(tmp_path, 1, "1", "c")
    assert c["records"] != a["records"] and c["randk"] != a["randk"]  # the seed does matter


SFT = ["stage=sft", "logger=none", "model.pretrain.enabled=false", "stage.max_steps=4", "stage.train_size=32",
       "stage.batch_size=8", "stage.val_every=2", "stage.val_size=8", "evaluate.limit=12", "checkpoint.every_n_train_steps=100"]


def test_two_cpu_sft_runs_with_the_same_seed_give_identical_metrics(make_cfg, tmp_path):
    first = run(make_cfg(*SFT, f"paths.output_dir={tmp_path / 'a'}"))
    second = run(make_cfg(*SFT, f"paths.output_dir={tmp_path / 'b'}"))
    assert "test/acc" in first and first == second  # exactly equal, every metric
    preds = [(tmp_path / d / "predictions.jsonl").read_text() for d in ("a", "b")]
    assert preds[0] == preds[1] and preds[0]
    run(make_cfg(*SFT, "seed=1", f"paths.output_dir={tmp_path / 'c'}"))
    # and the seed is really used: other data order, other weights, other completions (the metrics of a
    # 4-step model can coincide: all zero when nothing parses)
    assert (tmp_path / "c" / "predictions.jsonl").read_text() != preds[0]
