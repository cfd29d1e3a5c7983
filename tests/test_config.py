"""Every config group option composes with the defaults, and the defaults mean what the README says."""

from __future__ import annotations

import pytest
from conftest import CONF

GROUP_OPTIONS = sorted(
    (p.parent.relative_to(CONF).as_posix(), p.stem)
    for p in CONF.rglob("*.yaml")
    if p.parent != CONF
)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_group_option_composes(make_cfg, group, option):
    extra = ["data.root=/nonexistent"] if (group, option) == ("data", "omnimedvqa") else []
    cfg = make_cfg(f"{group}={option}", *extra, test_size=False)
    assert cfg.stage.name
    assert cfg.model.name
    if group == "experiment":
        assert cfg.experiment_name == option


def test_defaults_are_sft_on_synthmed_with_the_tiny_vlm_and_mlflow(make_cfg):
    cfg = make_cfg(test_size=False)
    assert (cfg.stage.name, cfg.data.name, cfg.model.name, cfg.logger.name) == ("sft", "synthmed", "tiny_vlm", "mlflow")
    assert cfg.logger.tracking_uri.startswith("sqlite:///") and cfg.logger.tracking_uri.endswith("/mlflow.db")
    assert cfg.data.n_train >= 8000  # the pool must allow K up to 8,000
