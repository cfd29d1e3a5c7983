"""MedGR2 entry point: ``python train.py stage=<pretrain|sft|evaluate|inspect> [overrides]``.

Examples::

    python train.py                                   # SFT on SynthMed with the tiny VLM (CPU)
    python train.py stage=inspect data=omnimedvqa data.root=/data/OmniMedVQA
    python train.py -m stage=sft stage.train_size=1000,2000 hydra/launcher=joblib

All options: ``python train.py --help`` (config groups) or ``--cfg job`` (the composed config).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import medgr2  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from medgr2.utils.cli import check_config, clean_errors
    from medgr2.utils.console import quiet_environment, setup_console

    quiet_environment()  # before the Hugging Face libraries are imported
    # Our own errors (a bad value, a bad file) end as one line `error: <message>`, exit status 2;
    # HYDRA_FULL_ERROR=1 shows the traceback. The config is checked before anything heavy is imported.
    with clean_errors():
        check_config(cfg)
        setup_console()
        from medgr2.pipeline import run
        from medgr2.utils.print_config import print_config

        if cfg.get("print_config", True):
            print_config(cfg)
        metrics = run(cfg)
    # Returned for Hydra sweepers that optimise a metric.
    return metrics.get("test/acc") if metrics else None


if __name__ == "__main__":
    main()
