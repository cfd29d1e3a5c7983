# Over ~450 lines: its split by responsibility is open work of issue 17 (see docs/architecture.md); behaviour is tested as it is.
"""The reward model R_φ (paper §3): a VLM backbone + a regression head, trained with MSE (Eq. 1).

Input: a chat item whose user turn is the VQA question (image + question + lettered options) and whose
assistant turn is the candidate response ``<think>rationale</think><answer>X</answer>``; the
:class:`~medgr2.data.collate.ChatCollator` builds it (``target`` = the response) and left-pads, so the
final non-pad position — the response's closing ``<|im_end|>``, which attends to the image, the question
and the whole response — is the last column. The head reads the backbone's last hidden state there
(``pooling="last"``, the usual choice for a deep VLM), or the mean of the last hidden states over the
response tokens (``"mean"``), or both concatenated (``"last_mean"``). Measured on SynthMed with the 2-layer
tiny VLM: last-token pooling plateaus near held-out Spearman 0.5 (1,200 steps) while mean pooling passes 0.85
in the same steps — two layers are too shallow to gather a whole response into one position — so the
reward stage's default (``conf/stage/reward.yaml``) is ``mean``.

With ``resolve_letter`` the item's response is followed by the text of the option its answer letter
points at (:func:`resolved_answer`), so that "does the letter match the rationale?" is a comparison of
two words rather than a letter-binding the tiny model learns slowly.

Target normalisation (``normalize``): the head predicts ``(r - mean) / std`` where mean/std are the
training targets' (≈ 2.5 and ≈ 6 for the four balanced grades 10/6/0/−6), so the last layer starts at
zero (every score = the mean) and sees unit-scale targets whatever the grade values; scores are mapped
back to the grade scale. The loss is Eq. 1 divided by ``std²`` — the same minimiser. With
``normalize=false`` mean/std are 0/1 and the loss is exactly Eq. 1.

An export (:meth:`RewardRegressor.export`) is a ``save_pretrained`` folder of the backbone (LoRA merged)
and processor plus ``reward_head.safetensors`` (head weights and the normalisation) and
``reward_head.json`` (head shape, prompt instruction, model spec, lineage). :func:`load_reward_model`
restores it; :class:`RewardScorer` scores records or items in batches for the score stage and GRPO.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medgr2.data.collate import IGNORE, model_inputs
from medgr2.data.grade_config import PROBE_GRADE  # one owner of the grade names (data/)
from medgr2.data.prompting import response_text, user_text
from medgr2.data.schema import LETTERS
from medgr2.evaluation.reward_metrics import (
    paired_scores,
    pairwise_accuracy,
    per_grade_means,
    regression_metrics,
)
from medgr2.models.adapters import merged, unwrap
from medgr2.modules import sharding
from medgr2.modules.optim import warmup_cosine
from medgr2.modules.reward_collate import (  # noqa: F401 - re-exported: callers import them from here
    PIXEL_CACHE_BYTES,
    PROMPT_CACHE_ITEMS,
    RewardCollator,
    ScoringCache,
    ScoringCollator,
    _prefetched,
    prefetch_default,
)
from medgr2.modules.sft import VLMModule

HEAD_WEIGHTS = "reward_head.safetensors"
HEAD_CONFIG = "reward_head.json"

log = logging.getLogger(__name__)


class RewardHead(nn.Module):
    """``(B, H) -> (B,)``: a linear layer, or a one-hidden-layer MLP when ``hidden > 0``.

    The last layer starts at zero so an untrained head predicts the target mean (no large initial loss
    that would push random gradients into a pretrained backbone).
    """

    def __init__(self, in_features: int, hidden: int = 0):
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(in_features, 1)
        last = self.net[-1] if isinstance(self.net, nn.Sequential) else self.net
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).squeeze(-1)  # (B, H) -> (B,)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the final non-pad position of each row, for left or right padding: ``(B, T) -> (B,)``."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)  # (B, T)
    return (positions * attention_mask.long()).argmax(dim=1)


_ANSWER_RE = re.compile(r"<answer>\s*([A-Za-z])\s*</answer>")


def resolved_answer(response: str, options: Sequence[str]) -> str:
    """``"\nB) red"`` for a response whose (last) ``<answer>`` is the letter B of ``options``; ``""`` when the
    response states no letter or one outside the options.

    R_φ reads this line after the response (``resolve_letter``): a letter means nothing without the option
    it points at, and a judge reads both. It turns "is the letter the one the rationale argues for?" into
    comparing two words — which a small VLM learns in minutes — instead of binding shuffled letters to
    options, which it learns slowly (docs/field-facts.md, "Tiny model").
    """
    found = _ANSWER_RE.findall(response or "")
    if not found:
        return ""
    idx = LETTERS.find(found[-1].upper())
    return f"\n{LETTERS[idx]}) {options[idx]}" if 0 <= idx < len(options) else ""


def reward_item(rec: Mapping[str, Any], instruction: str = "", response_key: str = "response",
                resolve_letter: bool = True) -> dict[str, Any]:
    """A record (or a ready item) as a reward-model item: user turn = the VQA question, assistant = the response.

    Accepted inputs: a chat item ``{image, prompt, target}`` (taken as is; ``prefix`` is prepended to the
    response), or a schema record with a ``response`` column (graded rows, candidates, policy samples),
    or a schema record without one, whose reference ``<think>rationale</think><answer>X</answer>`` is scored.
    With ``resolve_letter`` a record's response is followed by :func:`resolved_answer`.
    """
    if "prompt" in rec and "target" in rec and "question" not in rec:
        return {"image": rec["image"], "prompt": rec["prompt"], "prefix": "",
                "target": f"{rec.get('prefix', '')}{rec['target']}"}
    response = rec.get(response_key)
    if not response:
        response = response_text(rec.get("rationale", ""), str(rec["answer"]).strip().upper())
    if resolve_letter:
        response += resolved_answer(response, list(rec.get("options") or []))
    return {"image": rec["image"], "prompt": user_text(rec, instruction), "prefix": "", "target": response}


POOLINGS = ("last", "mean", "last_mean")


def pool_hidden(hidden: Tensor, attention_mask: Tensor, response_mask: Tensor | None, pooling: str) -> Tensor:
    """``(B, T, H)`` last hidden states -> ``(B, H)`` (``last``/``mean``) or ``(B, 2H)`` (``last_mean``).

    ``response_mask`` ``(B, T)`` marks the response tokens averaged by ``mean``; None: every non-pad token.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_token_index(attention_mask)]  # (B, H)
    if pooling == "last":
        return last
    w = (response_mask if response_mask is not None else attention_mask).to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    mean = (hidden * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # (B, H)
    return mean if pooling == "mean" else torch.cat([last, mean], dim=-1)  # (B, 2H)


class RewardRegressor(VLMModule):
    """R_φ: backbone from the model factory (optionally LoRA) + :class:`RewardHead` on the pooled last hidden state.

    :param pooling: ``last`` (final non-pad position), ``mean`` (mean over the response tokens) or
        ``last_mean`` (both, concatenated); see the module docstring.
    :param head_hidden: width of the head's hidden layer (0: a single ``nn.Linear(hidden, 1)``).
    :param target_mean/target_std: the normalisation (see the module docstring); kept as buffers so they
        travel with checkpoints and exports.
    :param head_lr: learning rate of the head (default: ``lr``); a fresh head next to a pretrained
        backbone often wants a larger one.
    :param hi/lo: grade thresholds of the separation accuracy (good ≥ ``hi``, bad ≤ ``lo``).
    :param instruction: the prompt instruction the items are built with; saved in the export so scoring
        builds the same prompts.
    :param resolve_letter: items show the chosen option's text after the response (:func:`resolved_answer`);
        saved in the export for the same reason.
    """

    def __init__(self, model: dict[str, Any], weights: str | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 50, total_steps: int = 1000,
                 eight_bit_optim: bool = False, lora: bool | None = None, head_hidden: int = 64,
                 target_mean: float = 0.0, target_std: float = 1.0, head_lr: float | None = None,
                 hi: float = 6.0, lo: float = 0.0, instruction: str = "", pooling: str = "last",
                 resolve_letter: bool = True):
        super().__init__(model=model, weights=weights, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         total_steps=total_steps, eight_bit_optim=eight_bit_optim, lora=lora)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        hidden = self.model.config.get_text_config().hidden_size
        self.pooling = pooling
        self._head_in = hidden * (2 if pooling == "last_mean" else 1)
        self.head = RewardHead(self._head_in, int(head_hidden))
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.instruction = instruction
        self.resolve_letter = bool(resolve_letter)
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
                                 self._val["source_id"], hi=self.hparams.hi, lo=self.hparams.lo)
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
        head = RewardHead(self._head_in, int(self.hparams.head_hidden))
        head.load_state_dict(sharding.full_state_dict(self.head))
        self.head = head.to(self.device)

    def configure_optimizers(self):
        hp = self.hparams
        groups = [
            {"params": [p for p in self.model.parameters() if p.requires_grad], "lr": hp.lr},
            {"params": list(self.head.parameters()), "lr": hp.head_lr or hp.lr},
        ]
        groups = [g for g in groups if g["params"]]
        if hp.eight_bit_optim:
            import bitsandbytes as bnb

            opt = bnb.optim.AdamW8bit(groups, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, hp.warmup_steps, hp.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------------------ export

    def head_config(self) -> dict[str, Any]:
        """What :func:`load_reward_model` needs besides the weights."""
        spec = copy.deepcopy(self.hparams.model)
        return {
            "head_hidden": int(self.hparams.head_hidden),
            "pooling": self.pooling,
            "target_mean": float(self.target_mean),
            "target_std": float(self.target_std),
            "hi": float(self.hparams.hi),
            "lo": float(self.hparams.lo),
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
    """Held-out metrics: regression metrics on the graded rows (finite target), the pairwise accuracy
    original > :data:`PROBE_GRADE` matched by ``source_id``, and the mean score of each grade."""
    graded = [i for i, t in enumerate(targets) if not math.isnan(t)]
    out = regression_metrics([scores[i] for i in graded], [targets[i] for i in graded], hi, lo)
    better, worse = paired_scores(scores, grades, source_ids, "original", PROBE_GRADE)
    out["pairwise_acc"] = pairwise_accuracy(better, worse)
    out["pairwise_n"] = float(len(better))
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
    module = RewardRegressor(model=_model_spec_for(path, meta), weights=None, lora=False,
                             head_hidden=int(meta["head_hidden"]), target_mean=float(meta["target_mean"]),
                             target_std=float(meta["target_std"]), hi=float(meta.get("hi", 6.0)),
                             lo=float(meta.get("lo", 0.0)), instruction=str(meta.get("instruction", "")),
                             pooling=str(meta.get("pooling", "last")),
                             resolve_letter=bool(meta.get("resolve_letter", False)))
    module.load_head(path)
    module.lineage = dict(meta.get("lineage") or {})
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return module.to(device).eval()


# ---------------------------------------------------------------------------------------------- scoring


class RewardScorer:
    """Batched, no-grad, deterministic R_φ scoring: ``RewardScorer(path).score(records) -> [float]``.

    ``records_or_items``: schema records (scored on their ``response`` column, else on their reference
    rationale + answer), or chat items ``{image, prompt, target}`` — see :func:`reward_item`. Scores come
    back in input order. Eval mode (no dropout) and a fixed per-sequence computation make them
    independent of the batch they were in up to float rounding (left padding is masked; M-RoPE
    positions follow the attention mask).

    Batches are built by :class:`ScoringCollator` (the same tensors as :class:`RewardCollator`, cheaper).
    ``prefetch`` collates the next batch in a second Python thread while the model runs the current one:
    ``None`` (default) turns it on for a model on an accelerator, off on CPU (:func:`prefetch_default`);
    scores are the same either way (same batches, same order).
    """

    def __init__(self, path_or_module: str | Path | RewardRegressor, device: str | torch.device | None = None,
                 batch_size: int = 32, prefetch: bool | None = None):
        if isinstance(path_or_module, RewardRegressor):
            self.module = path_or_module
        else:
            self.module = load_reward_model(path_or_module, device)
        self.path = None if isinstance(path_or_module, RewardRegressor) else str(path_or_module)
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.collate = ScoringCollator(self.module.processor)

    @property
    def instruction(self) -> str:
        return self.module.instruction

    def items(self, records_or_items: Iterable[Mapping[str, Any]], response_key: str = "response"):
        """Reward items built exactly as in training (same instruction, same letter resolution)."""
        for rec in records_or_items:
            yield reward_item(rec, self.instruction, response_key, self.module.resolve_letter)

    def batches(self, records_or_items: Iterable[Mapping[str, Any]], batch_size: int,
                response_key: str = "response") -> Iterator[tuple[int, dict[str, Any]]]:
        """``(n_items, collated batch)`` for consecutive runs of ``batch_size`` items, in order."""
        cache = ScoringCache()  # per call: repeats across calls (e.g. a benchmark's rounds) are not reused
        buf: list[dict[str, Any]] = []
        for item in self.items(records_or_items, response_key):
            buf.append(item)
            if len(buf) == batch_size:
                yield len(buf), self.collate(buf, cache)
                buf = []
        if buf:
            yield len(buf), self.collate(buf, cache)

    @torch.no_grad()
    def score(self, records_or_items: Iterable[Mapping[str, Any]], batch_size: int | None = None,
              progress: bool = False, response_key: str = "response", prefetch: bool | None = None) -> list[float]:
        """R_φ score (grade scale) of every record/item, in order.

        ``prefetch`` overrides the scorer's setting for this call (see the class docstring).
        """
        from tqdm.auto import tqdm

        bs = int(batch_size or self.batch_size)
        use_thread = prefetch if prefetch is not None else self.prefetch
        device = next(self.module.parameters()).device
        if use_thread is None:
            use_thread = prefetch_default(device)
        was_training = self.module.training
        self.module.eval()
        total = len(records_or_items) if hasattr(records_or_items, "__len__") else None
        bar = tqdm(total=total, desc="R_phi scoring", unit="item", disable=not progress)
        out: list[float] = []
        batches = self.batches(records_or_items, bs, response_key)
        if use_thread:
            batches = _prefetched(batches, torch.get_num_threads())
        try:
            for n, batch in batches:
                batch = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
                out.extend(self.module(batch).float().cpu().tolist())  # (B,)
                bar.update(n)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            bar.close()
            self.module.train(was_training)
        return out
