"""Every config group option composes with the defaults, and the defaults mean what the README says."""

from __future__ import annotations

import pytest
from conftest import CONF

GROUP_OPTIONS = sorted(
    (p.parent.relative_to(CONF).as_posix(), p.stem)
    for p in CONF.rglob("*.yaml")
    if p.parent != CONF and p.parent.relative_to(CONF).parts[0] != "hydra"
)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_group_option_composes(make_cfg, group, option):
    extra = ["data.root=/nonexistent"] if (group, option) == ("data", "omnimedvqa") else []
    cfg = make_cfg(f"{group}={option}", *extra, test_size=False)
    assert cfg.stage.name
    assert cfg.model.name
    if group == "experiment":
        assert cfg.experiment_name == option


def test_defaults_are_the_loop_on_synthmed_with_the_tiny_vlm_and_mlflow(make_cfg):
    cfg = make_cfg(test_size=False)
    assert (cfg.stage.name, cfg.data.name, cfg.model.name, cfg.logger.name) == ("loop", "synthmed", "tiny_vlm", "mlflow")
    assert (cfg.generator.name, cfg.select.method, cfg.stage.iterations) == ("simulated", "threshold", 2)
    assert cfg.logger.tracking_uri.startswith("sqlite:///") and cfg.logger.tracking_uri.endswith("/mlflow.db")
    assert cfg.data.n_train >= 8000  # the pool must allow K up to 8,000


@pytest.mark.parametrize("launcher", ["joblib", "slurm"])
def test_sweep_launchers_compose(launcher):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={launcher}", "experiment=topk"],
                      return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert ("Joblib" if launcher == "joblib" else "SlurmLauncher") in target
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.array_parallelism == 8
    # The MLflow store is prepared by the launching process before parallel jobs start.
    assert cfg.hydra.callbacks.mlflow_store._target_.endswith("PrepareMLflowStore")


def test_prepare_mlflow_store_creates_the_experiment_once(tmp_path):
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from medgr2.utils.hydra_callbacks import PrepareMLflowStore

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = OmegaConf.create({"logger": {"name": "mlflow", "tracking_uri": uri, "experiment": "medgr2",
                                       "artifact_location": str(tmp_path / "mlruns")}})
    PrepareMLflowStore().on_multirun_start(cfg)
    PrepareMLflowStore().on_multirun_start(cfg)  # idempotent
    assert MlflowClient(uri).get_experiment_by_name("medgr2") is not None
