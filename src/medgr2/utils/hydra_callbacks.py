"""Hydra callbacks registered in ``conf/train.yaml`` (``hydra.callbacks``)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class PrepareMLflowStore(Callback):
    """Create the MLflow SQLite store and experiment once, before the jobs of a sweep start.

    With ``hydra/launcher=joblib`` several jobs open a fresh ``mlflow.db`` at the same moment; each would
    run the schema migrations and create the experiment, and the losers fail on a locked database or a
    unique-name conflict. Doing it here, in the launching process, leaves the jobs only appending runs.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import medgr2  # noqa: F401  (registers the config resolvers)

        lcfg = config.get("logger")
        if not lcfg or lcfg.get("name") != "mlflow":
            return
        from mlflow.tracking import MlflowClient

        uri, name = str(lcfg.tracking_uri), str(lcfg.experiment)
        client = MlflowClient(uri)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=str(lcfg.artifact_location))
        log.info("MLflow store ready for the sweep: %s (experiment %s)", uri, name)
