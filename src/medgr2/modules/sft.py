"""SFT policy (warm start, Eq. 2): next-token loss on the answer tokens only (the LM head runs on them only).

Also used for the embedded model's pretraining and for distilling the generator: one training loop.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medgr2.configs.training import OptimConfig
from medgr2.data.collate import model_inputs
from medgr2.data.synthmed import tokenizer_corpus
from medgr2.models.factory import ModelSpec, count_parameters, load_vlm
from medgr2.rl.lm_loss import answer_nll, answer_window, choice_token_stats, letter_stats
from medgr2.training import sharding
from medgr2.training.optim import adamw_warmup_cosine


def sft_forward(model, batch: dict[str, torch.Tensor], answer_only: bool = True
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """``(logits, batch_tail, offset)``: the LM head's logits only over the answer window (or all positions).

    ``batch_tail`` holds ``labels`` / ``input_ids`` / ``letter_pos`` / ``letter_ids`` shifted to the window that
    starts at column ``offset``; the losses computed on it equal the full-logits ones (the other positions
    carry no label). ``answer_only=False`` is the full-vocabulary-everywhere baseline (benchmarks).
    """
    labels = batch["labels"]  # (B, T)
    keep = answer_window(labels) if answer_only else 0  # 0: every position (transformers' convention)
    logits = model(**model_inputs(batch), logits_to_keep=keep).logits  # (B, K, V)
    off = labels.shape[1] - logits.shape[1]
    pos = batch["letter_pos"]
    tail = {"labels": labels[:, off:], "input_ids": batch["input_ids"][:, off:],
            "letter_pos": torch.where(pos >= 0, pos - off, pos), "letter_ids": batch["letter_ids"]}
    return logits, tail, off


class VLMModule(L.LightningModule):
    """Base: owns the VLM and its processor (from the model factory) and the optimizer settings (``optim``)."""

    def __init__(self, model: dict[str, Any], weights: str | None = None, optim: OptimConfig | None = None,
                 lora: bool | None = None):
        super().__init__()
        self.optim = optim or OptimConfig()
        # Flat plain values (checkpoints load with weights_only=True and rebuild the module from them; subclasses
        # save their own). Not sent to the logger: the tracker already logs the whole resolved config as params,
        # and a second module in the same run (pretraining inside SFT) would clash with these.
        self.save_hyperparameters({"model": model, "weights": weights, "lora": lora,
                                   **dataclasses.asdict(self.optim)}, logger=False)
        self.spec = ModelSpec.from_config(model)
        self.model, self.processor = load_vlm(self.spec, weights=weights, corpus_fn=tokenizer_corpus, lora=lora)
        total, trainable = count_parameters(self.model)
        self.n_params, self.n_trainable = total, trainable

    # ------------------------------------------------------------------ FSDP2 (trainer=fsdp / fsdp2_cpu)
    def configure_model(self) -> None:
        """Shard the VLM with FSDP2 when the trainer's strategy is a ``ModelParallelStrategy``; otherwise nothing.

        Lightning calls this on every rank after the process group exists and before the optimizers are built
        (see :mod:`medgr2.training.sharding`). Idempotent.
        """
        opts = sharding.sharding_options(self)
        if opts is None or sharding.is_sharded(self.model):
            return
        self.shard(sharding.data_parallel_mesh(self), opts)

    def shard(self, mesh, opts: sharding.ShardingOptions) -> None:
        """Apply FSDP2 to every model this module trains or runs (subclasses add theirs)."""
        sharding.shard_vlm(self.model, mesh, opts)

    def on_fit_end(self) -> None:
        """After a sharded fit, every rank swaps in a plain model with the gathered weights (collective), so that
        ``export`` and the evaluation on rank 0 work as after unsharded training."""
        if sharding.is_sharded(self.model):
            self.unshard_after_fit()

    def unshard_after_fit(self) -> None:
        self.model = sharding.gather_full_model(self.model, self._rebuild_model, self.device)

    def _rebuild_model(self) -> torch.nn.Module:
        """A fresh unsharded model of this module's structure (weights are overwritten by the caller)."""
        return load_vlm(self.spec, weights=self.hparams.weights, corpus_fn=tokenizer_corpus,
                        lora=self.hparams.lora)[0]

    def configure_optimizers(self):
        o = self.optim
        return adamw_warmup_cosine(self.model.parameters(), o.lr, o.weight_decay, o.warmup_steps, o.total_steps)

    def export(self, out_dir: str | Path) -> Path:
        """Save weights + processor with ``save_pretrained`` (LoRA merged) for later stages to load."""
        from medgr2.models.adapters import merged
        from medgr2.utils.io import atomic_dir

        model = merged(self.model)
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
        return Path(out_dir)


class SFTPolicy(VLMModule):
    """Supervised fine-tuning on chat items; logs the whole-answer loss, the answer-letter loss/accuracy and,
    for verify rationales, the loss/accuracy of the per-option yes/no verdicts (``check_acc``)."""

    def __init__(self, model: dict[str, Any], weights: str | None = None, optim: OptimConfig | None = None,
                 lora: bool | None = None, **overrides: Any):
        """``optim``: the optimizer settings; ``overrides``: some of them changed (``lr=3e-3``), as a checkpoint's
        flat hyperparameters rebuild the module."""
        optim = optim or OptimConfig()
        super().__init__(model, weights=weights, optim=optim.replace(**overrides) if overrides else optim, lora=lora)
        tok = self.processor.tokenizer
        ids = [tok.encode(w, add_special_tokens=False) for w in (" yes", " no")]
        # Only when both verdicts are single tokens (the tiny tokenizer's and Qwen's are).
        self.check_ids = torch.tensor([i[0] for i in ids]) if all(len(i) == 1 for i in ids) else None

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits, tail, _ = sft_forward(self.model, batch)  # (B, K, V) over the answer window only
        loss = answer_nll(logits, tail["labels"])
        stats = letter_stats(logits, tail["input_ids"], tail["letter_pos"], tail["letter_ids"])
        if self.check_ids is not None:
            stats.update(choice_token_stats(logits, tail["labels"], self.check_ids.to(logits.device)))
        bs = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=stage != "train")
        for k, v in stats.items():
            if not torch.isnan(v):
                self.log(f"{stage}/{k}", v, prog_bar=k in ("letter_acc", "check_acc"), batch_size=bs,
                         sync_dist=stage != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")
