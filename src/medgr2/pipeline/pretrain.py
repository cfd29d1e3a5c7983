"""The embedded world's base model: a short, cached pretraining of the tiny VLM on SynthMed.

Real VLMs bring seeing and option-reading from pretraining; the tiny one gets a stand-in: descriptions of
images, and the conclusion of a VQA response given its findings (with verify rationales: the stated answer,
the per-option checks and the letter), mixed throughout, on SynthMed's ``pretrain`` split — disjoint from every
benchmark split. The result is cached by
a hash of the model, data and pretraining config (:func:`base_key`) and reused by every later stage and sweep
job.

The repository ships the base of the default config (``medgr2/assets/base/pretrained-<key>``, ~1.4 MB):
pretraining it takes most of a first ``make demo`` on 2 cores (~15 of its ~20 minutes), so a config whose key
matches uses the shipped folder and pretrains nothing; any other config pretrains into the cache as before.
``tests/test_shipped_base.py`` fails when the default config's key moves away from the shipped folder, and
``make base`` (``python train.py stage=pretrain stage.ship=true``) pretrains it anew and ships it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medgr2.configs.training import OptimConfig
from medgr2.data.collate import ChatCollator
from medgr2.data.prompting import chat_item, split_rationale
from medgr2.data.synthmed import describe
from medgr2.modules.sft import SFTPolicy
from medgr2.pipeline.common import (
    cache_dir,
    fingerprint,
    instruction,
    isolated_seed,
    load_split,
    product_seed,
    seed_part,
    to_dict,
)
from medgr2.pipeline.stage import Artifact, child_run, fit_and_export
from medgr2.pipeline.tracking import Tracker
from medgr2.training.item_dataset import ItemDataset

log = logging.getLogger(__name__)

DESCRIBE_PROMPT = "Describe the image."
#: The pretrained bases the package ships (package data): ``pretrained-<base_key>`` folders.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets" / "base"


def pretrain_item(rec: Mapping[str, Any], instruction: str = "") -> dict[str, Any]:
    """Even indices: describe the image. Odd: from the findings, conclude (answer, option checks, letter).

    Both skills are slow for a random-init tiny VLM on 2 cores (measured: after 800 steps at batch 32 with
    one item in three describing, SFT from the base still misread colours and letters), so they are mixed
    half and half throughout rather than phased (a phase switch broke learning: docs/field-facts.md, "Tiny model")."""
    truth = json.loads(rec["provenance"])["truth"]
    if truth["index"] % 2 == 0:
        return {"image": rec["image"], "prompt": DESCRIBE_PROMPT, "prefix": "",
                "target": f"<think>{describe(truth)}</think>"}
    # The findings are given; the model learns the rest: "Answer: …", the per-option checks and the letter.
    # The ``answer`` style has only the letter to learn, as before.
    findings, conclusion = split_rationale(rec["rationale"])
    if conclusion.startswith(" The answer is"):
        findings, conclusion = rec["rationale"], ""
    return chat_item(rec, instruction, prefix=f"<think>{findings}",
                     target=f"{conclusion}</think><answer>{rec['answer']}</answer>")


def base_key(cfg: DictConfig) -> str:
    """Identity of the pretrained base: the tiny model's sizes, the data config and ``model.pretrain``."""
    m = to_dict(cfg.model)
    model_part = {k: m.get(k) for k in ("tiny", "image_size", "dtype")}
    return fingerprint(model_part, cfg.data, m.get("pretrain"), cfg.data.get("instruction"), *seed_part(cfg, "base"))


def output_path(cfg: DictConfig, folder: Path | None = None) -> Path:
    """Where the pretrained base of this config is cached (``<cache>/base/pretrained-<key>``; it may not exist
    yet), or would be in ``folder`` (the shipped bases' folder)."""
    return (folder if folder is not None else cache_dir(cfg) / "base") / f"pretrained-{base_key(cfg)}"


def _complete_export(folder: Path) -> bool:
    # A base folder written before the artifact meta: the model's config and weights are there. (Such folders
    # were exported in place, so a killed export could leave the config without the weights.)
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def base_artifact(cfg: DictConfig, folder: Path | None = None) -> Artifact:
    """The pretrained base as a cached product: :func:`output_path` under :func:`base_key`; folders from before
    the artifact meta are recognised by their export files."""
    return Artifact(output_path(cfg, folder), base_key(cfg), ready=_complete_export)


def shipped_base(cfg: DictConfig, shipped_dir: Path | None = None) -> Path | None:
    """The base the package ships (in ``shipped_dir``, default :data:`SHIPPED_DIR`) for this config's
    :func:`base_key`, or None when it ships none for it."""
    shipped = base_artifact(cfg, shipped_dir or SHIPPED_DIR)
    return shipped.path if shipped.meta() is not None else None


def base_weights(cfg: DictConfig, tracker: Tracker | None = None) -> str | None:
    """Path of the pretrained base for this config, or None when the model is a real checkpoint
    (``model.pretrain`` unset) or the data is not SynthMed.

    The shipped base when its key matches (every machine then starts from the same weights), else the cached
    one, pretrained on first use (by every DDP rank together; rank 0 publishes it)."""
    pcfg = cfg.model.get("pretrain")
    if not pcfg or not pcfg.get("enabled", True) or cfg.data.name != "synthmed":
        return None
    shipped = shipped_base(cfg)
    if shipped is not None:
        log.info("using the shipped pretrained base %s", shipped)
        return str(shipped)
    base = base_artifact(cfg)
    if base.meta() is not None:
        log.info("reusing the cached pretrained base %s", base.path)
        return str(base.path)
    log.info("pretraining the tiny base model once (cached at %s)", base.path)
    base.get_or_build(lambda tmp: _pretrain_in_child_run(cfg, tmp, tracker), collective=True)
    return str(base.path)


def ship_base(cfg: DictConfig, tracker: Tracker | None = None, shipped_dir: Path | None = None) -> Path:
    """Pretrain the base of ``cfg`` anew (whatever is shipped or cached) and ship it: it becomes the only
    ``pretrained-<key>`` folder in ``shipped_dir``. ``make base`` runs this for the default config."""
    if not cfg.model.get("pretrain") or cfg.data.name != "synthmed":
        raise ValueError("stage.ship=true ships the tiny model's pretrained base: it needs model.pretrain and "
                         "data=synthmed")
    shipped_dir = shipped_dir or SHIPPED_DIR
    target = base_artifact(cfg, shipped_dir)
    target.get_or_build(lambda tmp: _pretrain_in_child_run(cfg, tmp, tracker), rebuild=True, collective=True)
    if rank_zero_only.rank == 0:
        for old in shipped_dir.glob("pretrained-*"):
            if old != target.path:
                shutil.rmtree(old)
                log.info("removed the previously shipped base %s", old)
    return target.path


def run_pretrain_stage(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """``stage=pretrain``: build (or find) the base and print where it is; ``stage.ship=true`` rebuilds the
    shipped one."""
    path = ship_base(cfg, tracker) if cfg.stage.get("ship") else base_weights(cfg, tracker)
    print(f"pretrained base: {path}")
    return {}


def _pretrain_in_child_run(cfg: DictConfig, out: Path, tracker: Tracker | None) -> None:
    with child_run(tracker or Tracker(), "pretrain") as child, isolated_seed(product_seed(cfg, "base")):
        run_pretrain(cfg, out, child)  # seeds.base, not the run's seed: sweeps share the base


def run_pretrain(cfg: DictConfig, out: Path, tracker: Tracker) -> Path:
    """Train the tiny VLM on descriptions + conclusions from given findings and export it to ``out``."""
    p = cfg.model.pretrain
    rows = load_split(cfg, "pretrain", limit=int(p.n_items))
    instr = instruction(cfg)
    optim = OptimConfig(lr=float(p.lr), warmup_steps=int(p.warmup_steps), total_steps=int(p.steps))
    module = SFTPolicy(model=to_dict(cfg.model), weights=None, optim=optim, lora=False)
    loader = DataLoader(ItemDataset(rows, lambda r: pretrain_item(r, instr)), batch_size=int(p.batch_size),
                        shuffle=True, collate_fn=ChatCollator(module.processor), num_workers=0)
    fit_and_export(cfg, tracker, module, loader, max_steps=int(p.steps), out=out, export_to=out, checkpoints=False,
                   label="pretrain")
    return out
