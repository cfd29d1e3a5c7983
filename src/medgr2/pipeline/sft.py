"""``stage=sft``: reward-filtered (or raw) SFT warm start, then evaluation on the test split."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medgr2.configs.training import SFTConfig
from medgr2.data.collate import ChatCollator, vqa_item
from medgr2.modules.sft import SFTPolicy
from medgr2.pipeline.common import instruction as config_instruction
from medgr2.pipeline.common import load_split, output_dir, stage_rows, to_dict
from medgr2.pipeline.pretrain import base_weights
from medgr2.pipeline.stage import fit_and_export
from medgr2.pipeline.tracking import Tracker
from medgr2.training.item_dataset import ItemDataset

log = logging.getLogger(__name__)


def run_sft(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """``stage=sft``: :func:`train_sft`'s metrics."""
    return train_sft(cfg, tracker)[0]


def train_sft(cfg: DictConfig, tracker: Tracker) -> tuple[dict[str, float], Path]:
    """SFT with ``cfg.stage``; returns the metrics (test metrics when ``stage.evaluate``) and the policy folder."""
    s = SFTConfig.from_node(to_dict(cfg.stage))  # unknown keys and bad values fail here, before any work
    weights = s.init or base_weights(cfg, tracker)
    instruction = config_instruction(cfg)
    think = bool(s.think)
    rows = stage_rows(cfg, "training rows")
    val = load_split(cfg, "val", limit=s.val_size)
    module = SFTPolicy(model=to_dict(cfg.model), weights=weights, optim=s.optim())
    collate = ChatCollator(module.processor)

    def to_item(r):
        return vqa_item(r, instruction, think=think)

    train_dl = DataLoader(ItemDataset(rows, to_item), batch_size=int(s.batch_size), shuffle=True,
                          collate_fn=collate, num_workers=0)
    val_dl = DataLoader(ItemDataset(val, to_item), batch_size=int(s.batch_size), collate_fn=collate)
    log.info("SFT on %d rows (think=%s) for %d steps from %s", len(rows), think, s.max_steps,
             weights or cfg.model.get("path") or "the tiny model's random init")  # a real checkpoint is not scratch
    out = output_dir(cfg)
    policy_dir = out / "policy"
    metrics = fit_and_export(cfg, tracker, module, train_dl, val_dl, max_steps=int(s.max_steps), out=out,
                             export_to=policy_dir, export_tag="policy_dir", ckpt_path=s.ckpt_path,
                             val_every=min(int(s.val_every), int(s.max_steps)), evaluate=bool(s.evaluate))
    return {"train_rows": float(len(rows)), **metrics}, policy_dir
