"""Seeds as a sweep axis: ``seed`` re-draws the run, ``seeds.*`` the shared products; MLflow names sweep jobs."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from conftest import ROOT, TEST_OVERRIDES
from omegaconf import open_dict

from medgr2.pipeline.common import isolated_seed, product_seed
from medgr2.pipeline.tracking import run_name, sweep_keys


def test_run_name_is_recipe_sweep_keys_and_seed(make_cfg):
    cfg = make_cfg("experiment=topk", "k=2000", "seed=1")
    over = ["experiment=topk", "k=2000", "seed=1", "paths.root=/x", "cpu_threads=1", "logger.tags.a=b"]
    sweep = sweep_keys(cfg, over)
    assert sweep == {"k": "2000"}
    assert run_name(cfg, "loop", sweep) == "topk k=2000 seed=1"
    plain = make_cfg("stage=sft")
    assert run_name(plain, "sft", sweep_keys(plain, [])) == "sft seed=0"
    # Without Hydra's overrides (a composed config): the shortcuts that are set.
    assert sweep_keys(cfg, []) == {"k": "2000"}


def test_run_seed_does_not_move_the_shared_products_but_their_own_seeds_do(make_cfg):
    from medgr2.pipeline.pretrain import base_key
    from medgr2.pipeline.reward import reward_key

    a, b = make_cfg("stage=loop", "seed=0"), make_cfg("stage=loop", "seed=7")
    assert base_key(a) == base_key(b) and reward_key(a) == reward_key(b)
    assert a.stage.generate.seed == b.stage.generate.seed == 0 and b.generator.seed == 0
    # Keys made before `seeds` existed (built with seed 0) still match at the default seeds.* = 0.
    legacy = make_cfg("stage=loop")
    with open_dict(legacy):
        del legacy["seeds"]
    assert base_key(legacy) == base_key(a) and reward_key(legacy) == reward_key(a)
    c = make_cfg("stage=loop", "seeds.base=1", "seeds.reward=2", "seeds.pool=3")
    assert base_key(c) != base_key(a) and reward_key(c) != reward_key(a)
    assert c.stage.generate.seed == 3 and c.generator.seed == 3 and product_seed(c, "reward") == 2
    # R_φ^0 trains from the pretrained base: another base seed is another R_φ^0, not a cache hit.
    assert reward_key(make_cfg("stage=loop", "seeds.base=1")) != reward_key(a)
    # Both ways of seeding: the products can follow the run's seed.
    d = make_cfg("stage=loop", "seed=4", "seeds.pool=${seed}")
    assert d.stage.generate.seed == 4


def test_a_product_built_under_its_own_seed_leaves_the_runs_random_stream_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with isolated_seed(5):
        inside = torch.rand(2)
    after = torch.rand(3)
    assert torch.equal(after, expected)  # the run draws the same whether or not the product was built here
    torch.manual_seed(999)
    with isolated_seed(5):
        again = torch.rand(2)
    assert torch.equal(inside, again)  # the product does not depend on the run's seed
    assert os.environ.get("PL_GLOBAL_SEED") != "5"


def test_a_seed_sweep_gives_one_named_mlflow_run_per_seed_with_sweep_tags(tmp_path, shared_cache):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *TEST_OVERRIDES, f"paths.cache_dir={shared_cache}",
           "stage=inspect", "seed=0,1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("medgr2").experiment_id])
    sweep = " ".join(o for o in TEST_OVERRIDES if not o.startswith(("print_config", "trainer.enable_progress_bar",
                                                                    "trainer.log_every_n_steps")))
    assert sorted(r.info.run_name for r in runs) == [f"inspect {sweep} seed=0", f"inspect {sweep} seed=1"]
    for r in runs:
        assert r.data.tags["sweep"] == f"{sweep} stage=inspect" and r.data.tags["seed"] == r.data.params["seed"]
        assert r.data.tags["sweep.data.n_test"] == "40" and r.data.params["seeds.pool"] == "0"
