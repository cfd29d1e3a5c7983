"""The reward model R_φ (paper §3) as a LightningModule: a VLM backbone + a regression head, trained with MSE (Eq. 1).

Input: a chat item whose user turn is the VQA question (image + question + lettered options) and whose
assistant turn is the candidate response ``<think>rationale</think><answer>X</answer>``
(:func:`medgr2.data.reward_items.reward_item`); the :class:`~medgr2.data.collate.ChatCollator` builds it
(``target`` = the response) and left-pads, so the final non-pad position — the response's closing
``<|im_end|>``, which attends to the image, the question and the whole response — is the last column. The head
(:mod:`medgr2.models.reward_head`) reads the pooled last hidden states (``pooling``: last / mean / last_mean).

Target normalisation (``normalize``): the head predicts ``(r - mean) / std`` where mean/std are the
training targets' (≈ 2.5 and ≈ 6 for the four balanced grades 10/6/0/−6), so the last layer starts at
zero (every score = the mean) and sees unit-scale targets whatever the grade values; scores are mapped
back to the grade scale. The loss is Eq. 1 divided by ``std²`` — the same minimiser. With
``normalize=false`` mean/std are 0/1 and the loss is exactly Eq. 1.

An export (:meth:`RewardRegressor.export`) is a ``save_pretrained`` folder of the backbone (LoRA merged)
and processor plus ``reward_head.safetensors`` (head weights and the normalisation) and
``reward_head.json`` (head shape, prompt instruction, model spec, lineage). :func:`load_reward_model`
restores it; :class:`medgr2.modules.reward_scorer.RewardScorer` scores records or items in batches.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medgr2.configs.reward import RewardModelConfig
from medgr2.configs.training import OptimConfig
from medgr2.data.collate import IGNORE, model_inputs
from medgr2.data.grade_config import IMAGE_SWAP_GRADE, PROBE_GRADE  # one owner of the grade names (data/)
from medgr2.evaluation.reward_metrics import (
    paired_scores,
    pairwise_accuracy,
    per_grade_means,
    regression_metrics,
)
from medgr2.models.adapters import merged, unwrap
from medgr2.models.reward_head import RewardHead, pool_hidden
from medgr2.modules.sft import VLMModule
from medgr2.training import sharding
from medgr2.training.optim import warmup_cosine

HEAD_WEIGHTS = "reward_head.safetensors"
HEAD_CONFIG = "reward_head.json"

log = logging.getLogger(__name__)


class RewardRegressor(VLMModule):
    """R_φ: backbone from the model factory (optionally LoRA) + :class:`RewardHead` on the pooled last hidden state.

    Args:
        model / weights / lora: as :class:`VLMModule`.
        config: every module setting (:class:`~medgr2.configs.reward.RewardModelConfig`: pooling, head
            width, letter resolution, optimisation, held-out thresholds, instruction); None: the defaults.
        target_mean / target_std: the normalisation (see the module docstring), measured on the training targets;
            kept as buffers so they travel with checkpoints and exports.
        **overrides: module settings (``lr=..., pooling=...``) applied on top of ``config``; an unknown name is an
            error. Hyperparameters are saved flat (plain values: checkpoints load with ``weights_only=True``).

    ``instruction`` and ``resolve_letter`` are saved in the export so scoring builds the same items.
    """

    def __init__(self, model: dict[str, Any], weights: str | None = None, config: RewardModelConfig | None = None,
                 lora: bool | None = None, target_mean: float = 0.0, target_std: float = 1.0, **overrides: Any):
        cfg = config or RewardModelConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        # Lightning collects this frame's arguments as hyperparameters: keep the dataclass out of them; the flat
        # values are saved below.
        config = None  # noqa: F841
        super().__init__(model=model, weights=weights, optim=OptimConfig(
            lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, total_steps=cfg.total_steps),
            lora=lora)
        self.save_hyperparameters({"model": model, "weights": weights, "lora": lora, "target_mean": float(target_mean),
                                   "target_std": float(target_std), **dataclasses.asdict(cfg)}, logger=False)
        self.cfg = cfg
        hidden = self.model.config.get_text_config().hidden_size
        self.pooling = cfg.pooling
        self._head_in = hidden * (2 if cfg.pooling == "last_mean" else 1)
        self.head = RewardHead(self._head_in, int(cfg.head_hidden))
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.instruction = cfg.instruction
        self.resolve_letter = bool(cfg.resolve_letter)
        self._val: dict[str, list] = {}

    # ------------------------------------------------------------------------------------------ forward

    def _backbone(self) -> nn.Module:
        """The multimodal decoder without the LM head (``Qwen2_5_VLModel``); LoRA layers sit inside it."""
        return unwrap(self.model).model

    def pooled(self, batch: Mapping[str, Any]) -> Tensor:
        """Pooled last hidden states, ``(B, H)`` or ``(B, 2H)``, in float32 for the head."""
        inputs = model_inputs(batch)
        # Calling the decoder directly skips the LM head: its (B, T, V) logits would be wasted work. Under FSDP2
        # the call runs inside the root's forward hooks (root_call), which gather the embeddings and final norm.
        hidden = sharding.root_call(self.model, self._backbone(), **inputs).last_hidden_state  # (B, T, H), normed
        labels = batch.get("labels")  # (B, T): the response tokens are the labelled ones
        response = labels != IGNORE if labels is not None else None
        return pool_hidden(hidden, inputs["attention_mask"], response, self.pooling).float()

    def forward_normalized(self, batch: Mapping[str, Any]) -> Tensor:
        """Head output in standardised target units, ``(B,)``."""
        return self.head(self.pooled(batch))

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """R_φ(x) on the grade scale, ``(B,)``."""
        return self.forward_normalized(batch) * self.target_std + self.target_mean

    # ------------------------------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        z = self.forward_normalized(batch)  # (B,)
        target = (batch["target"].to(z) - self.target_mean) / self.target_std  # (B,)
        loss = torch.mean((z - target) ** 2)  # Eq. 1 in standardised units
        bs = z.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        with torch.no_grad():
            score = z * self.target_std + self.target_mean
            self.log("train/mse", torch.mean((score - batch["target"].to(z)) ** 2), batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"score": [], "target": [], "grade": [], "source_id": []}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        score = self(batch)  # (B,)
        self._val["score"] += score.float().cpu().tolist()
        self._val["target"] += batch["target"].float().cpu().tolist()
        self._val["grade"] += list(batch["grade"])
        self._val["source_id"] += list(batch["source_id"])

    def on_validation_epoch_end(self) -> None:
        metrics = reward_metrics(self._val["score"], self._val["target"], self._val["grade"],
                                 self._val["source_id"], hi=self.cfg.hi, lo=self.cfg.lo)
        for k, v in metrics.items():
            if not math.isnan(v):
                self.log(f"val/{k}", v, prog_bar=k in ("spearman", "pairwise_acc"))

    def shard(self, mesh, opts) -> None:
        """FSDP2: the backbone as in :class:`VLMModule`, the head as one more unit (its gradients must be
        reduced across ranks too)."""
        super().shard(mesh, opts)
        sharding.shard_plain(self.head, mesh, opts)

    def unshard_after_fit(self) -> None:
        super().unshard_after_fit()
        head = RewardHead(self._head_in, int(self.cfg.head_hidden))
        head.load_state_dict(sharding.full_state_dict(self.head))
        self.head = head.to(self.device)

    def configure_optimizers(self):
        c = self.cfg
        groups = [
            {"params": [p for p in self.model.parameters() if p.requires_grad], "lr": c.lr},
            {"params": list(self.head.parameters()), "lr": c.head_lr or c.lr},
        ]
        groups = [g for g in groups if g["params"]]
        opt = torch.optim.AdamW(groups, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, c.warmup_steps, c.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------------------ export

    def head_config(self) -> dict[str, Any]:
        """What :func:`load_reward_model` needs besides the weights."""
        spec = copy.deepcopy(self.hparams.model)
        return {
            "head_hidden": int(self.cfg.head_hidden),
            "pooling": self.pooling,
            "target_mean": float(self.target_mean),
            "target_std": float(self.target_std),
            "hi": float(self.cfg.hi),
            "lo": float(self.cfg.lo),
            "instruction": self.instruction,
            "resolve_letter": self.resolve_letter,
            "model": {k: spec.get(k) for k in ("name", "dtype", "attn_implementation", "image_size",
                                               "min_pixels", "max_pixels", "trust_remote_code") if k in spec},
        }

    def export(self, out_dir: str | Path, lineage: Mapping[str, Any] | None = None) -> Path:
        """Backbone (LoRA merged) + processor + head weights + head config, written atomically."""
        from safetensors.torch import save_file

        from medgr2.utils.io import atomic_dir

        model = merged(self.model)
        state = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        state["target_mean"] = self.target_mean.detach().cpu().reshape(1)
        state["target_std"] = self.target_std.detach().cpu().reshape(1)
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            save_file(state, str(tmp / HEAD_WEIGHTS))
            meta = {**self.head_config(), "lineage": dict(lineage or {})}
            (tmp / HEAD_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return Path(out_dir)

    def load_head(self, path: str | Path) -> None:
        """Load head weights and normalisation from an export folder."""
        from safetensors.torch import load_file

        state = load_file(str(Path(path) / HEAD_WEIGHTS))
        self.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
        self.target_mean.fill_(float(state["target_mean"][0]))
        self.target_std.fill_(float(state["target_std"][0]))


def reward_metrics(scores: Sequence[float], targets: Sequence[float], grades: Sequence[str],
                   source_ids: Sequence[str], hi: float = 6.0, lo: float = 0.0) -> dict[str, float]:
    """Held-out metrics: regression metrics on the graded rows (finite target), the pairwise accuracies
    original > :data:`PROBE_GRADE` (``pairwise_acc``) and original > :data:`IMAGE_SWAP_GRADE` (``image_pair_acc``:
    the same response with another record's image; 0.5 = R_φ ignores the image) matched by ``source_id``, and
    the mean score of each grade."""
    graded = [i for i, t in enumerate(targets) if not math.isnan(t)]
    out = regression_metrics([scores[i] for i in graded], [targets[i] for i in graded], hi, lo)
    better, worse = paired_scores(scores, grades, source_ids, "original", PROBE_GRADE)
    out["pairwise_acc"] = pairwise_accuracy(better, worse)
    out["pairwise_n"] = float(len(better))
    better, worse = paired_scores(scores, grades, source_ids, "original", IMAGE_SWAP_GRADE)
    if better:  # exports scored before the image probes existed have none
        out["image_pair_acc"] = pairwise_accuracy(better, worse)
        out["image_pair_n"] = float(len(better))
    out.update({f"mean/{g}": v for g, v in per_grade_means(scores, grades).items()})
    return out


def _model_spec_for(path: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A model spec that loads the exported backbone itself (no tiny build, no LoRA: it is merged)."""
    spec = dict(meta.get("model") or {})
    spec.update(path=str(path), tiny=None, quantization="none", lora={"enabled": False})
    return spec


def load_reward_model(path: str | Path, device: str | torch.device | None = None) -> RewardRegressor:
    """An exported R_φ, in eval mode on ``device`` (default: CUDA when available, else CPU)."""
    path = Path(path)
    cfg_file = path / HEAD_CONFIG
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} is not a reward-model export (no {HEAD_CONFIG}); train one with "
                                "`python train.py stage=reward`")
    meta = json.loads(cfg_file.read_text())
    # Exports from before a key existed: their head was built with "last" pooling and no letter resolution.
    known = {k: meta[k] for k in ("hi", "lo", "instruction") if k in meta}
    config = RewardModelConfig(head_hidden=int(meta["head_hidden"]), pooling=str(meta.get("pooling", "last")),
                               resolve_letter=bool(meta.get("resolve_letter", False)), **known)
    module = RewardRegressor(model=_model_spec_for(path, meta), weights=None, config=config, lora=False,
                             target_mean=float(meta["target_mean"]), target_std=float(meta["target_std"]))
    module.load_head(path)
    module.lineage = dict(meta.get("lineage") or {})
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return module.to(device).eval()
