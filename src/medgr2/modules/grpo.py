"""GRPO policy (paper §3 "Stage 2", Eq. 3): G sampled rollouts per prompt, group-relative advantages, clipped loss.

One training step, on a batch of B VQA records (prompts):

1. **Rollouts** (no grad): every prompt is encoded (image + text) and prefilled **once**; its KV cache is
   expanded to its G rollouts and N = B*G completions are sampled together, token by token, with the KV cache
   (``rollout="expand"``, the default). ``rollout="repeat"`` instead repeats each prompt G times and calls
   ``model.generate`` (TRL's way, kept for comparison). Measured on the tiny VLM, 2 prompts x 4 rollouts x 32
   tokens, one CPU thread, interleaved in one process: ``expand`` takes ~0.7x the time of ``generate``.
   ``rollout="vllm"`` samples them from an in-process vLLM engine instead (:mod:`medgr2.modules.vllm_rollouts`;
   GPU only), started from the policy when training starts and sent the policy's weights before every rollout
   that follows an optimizer step; its tokens come back as the same (N, Tc) tensor, so steps 2-4 are unchanged.
2. **Rewards** (host): ``r = alpha * R_phi + beta_match * 1[extract(a') = a] (+ format_weight * format)``
   from :func:`medgr2.rl.composite_reward_components`; ``R_phi`` comes from an injectable ``rm_fn`` (the
   frozen reward model, or none: then the alpha term is 0).
3. **Advantages** by :func:`medgr2.rl.group_advantages` (TRL semantics).
4. **Loss**: one forward over the N prompt+completion sequences (each image's features computed once and
   shared by its G rows), logits divided by the sampling temperature (TRL), per-token log-probs of the
   sampled tokens, :func:`medgr2.rl.grpo_loss_with_stats`. On-policy the old log-probs are the current ones
   detached (no second forward); with ``num_iterations > 1`` the rollouts are kept and reused for that many
   optimizer steps, the first step's detached log-probs serving as the old ones.

Manual optimization: one optimizer step per Lightning ``training_step`` (DDP needs exactly one backward per
forward), which also lets a batch with NaN rewards be skipped without an update.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from medgr2.data.collate import ChatCollator, model_inputs, to_rgb
from medgr2.data.prompting import SHORT_INSTRUCTION, user_text
from medgr2.modules import sharding
from medgr2.modules.sft import VLMModule
from medgr2.modules.vllm_rollouts import VLLMRollouts, require_vllm
from medgr2.rl.advantages import SCALE_CHOICES, group_advantages
from medgr2.rl.answers import extract_answer, format_reward
from medgr2.rl.loss import LOSS_TYPES, grpo_loss_with_stats
from medgr2.rl.rewards import composite_reward_components

log = logging.getLogger(__name__)

# rm_fn(records, completions) -> (N,) reward-model scores; records[i] is the VQA record completion i answers.
RewardFn = Callable[[Sequence[Mapping[str, Any]], Sequence[str]], Tensor]
ROLLOUT_MODES = ("expand", "repeat", "vllm")
ON_NAN = ("skip", "raise")


class RewardHackingWarning(UserWarning):
    """Format reward rises while answer accuracy falls: the policy games the format term."""


def reward_model_fn(source: Any, instruction: str = SHORT_INSTRUCTION, batch_size: int = 32) -> RewardFn | None:
    """``rm_fn`` backed by the frozen reward model ``R_phi``: a ``RewardScorer`` or the path of an R_phi export.

    The reward-model module is imported lazily (it is heavy, and optional for match-only GRPO). When it cannot
    be imported, this warns loudly and returns ``None``: GRPO then trains on the match (+format) terms only.
    """
    if hasattr(source, "score"):
        scorer = source
    else:
        try:
            from medgr2.modules.reward import RewardScorer
        except ImportError as err:
            msg = (f"stage.reward_model={source!r} is set but medgr2.modules.reward.RewardScorer cannot be "
                   f"imported ({err}); GRPO falls back to the match (+format) reward WITHOUT R_phi (alpha term = "
                   "0). Set stage.reward_model=null to silence this.")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
            return None
        scorer = RewardScorer(source)
    # The user turn is rebuilt with the instruction R_phi was trained with, when the scorer knows it.
    rm_instruction = getattr(scorer, "instruction", instruction)

    def rm_fn(records: Sequence[Mapping[str, Any]], completions: Sequence[str]) -> Tensor:
        # The reward model scores (image, question, response) chat items, the same shape it was trained on.
        items = [{"image": r["image"], "prompt": user_text(r, rm_instruction), "prefix": "", "target": c}
                 for r, c in zip(records, completions, strict=True)]
        return torch.tensor(scorer.score(items, batch_size=batch_size), dtype=torch.float32)  # (N,)

    return rm_fn


class HackingMonitor:
    """Sliding-window reward-hacking detector: format rate up while accuracy down.

    Over the last ``window`` steps it compares the mean of the newer half with the older half; it fires when the
    format rate rose by more than ``threshold`` *and* accuracy fell by more than ``threshold``. It warns once per
    episode (re-armed when the condition clears) and :meth:`update` returns the flag every step, for logging.
    """

    def __init__(self, window: int = 40, threshold: float = 0.15):
        if window < 2:
            raise ValueError(f"hacking window must be >= 2 steps, got {window}")
        self.window, self.threshold = int(window), float(threshold)
        self.fmt: deque[float] = deque(maxlen=self.window)
        self.acc: deque[float] = deque(maxlen=self.window)
        self.active = False

    def update(self, format_rate: float, accuracy: float) -> bool:
        self.fmt.append(format_rate)
        self.acc.append(accuracy)
        if len(self.fmt) < self.window:
            return False
        h = self.window // 2
        f, a = list(self.fmt), list(self.acc)
        d_fmt = sum(f[h:]) / len(f[h:]) - sum(f[:h]) / h
        d_acc = sum(a[h:]) / len(a[h:]) - sum(a[:h]) / h
        flag = d_fmt > self.threshold and d_acc < -self.threshold
        if flag and not self.active:
            msg = (f"possible reward hacking: over the last {self.window} steps the format rate rose by {d_fmt:+.2f} "
                   f"while rollout accuracy changed by {d_acc:+.2f}")
            warnings.warn(msg, RewardHackingWarning, stacklevel=2)
            log.warning(msg)
        self.active = flag
        return flag


def sample_tokens(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """Sample one token per row from ``softmax(logits / temperature)`` restricted to the top-p nucleus.

    logits: (N, V) -> (N,) token ids. The most likely token always stays in the nucleus.
    """
    logits = logits.float() / temperature  # (N, V)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass *before* it already reaches top_p
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # Exponential race (argmax of p / Exp(1) noise) is an exact categorical sample, cheaper than multinomial.
    probs = logits.softmax(dim=-1)  # (N, V)
    return (probs / torch.empty_like(probs).exponential_(1.0)).argmax(dim=-1)  # (N,)


def completion_mask(tokens: Tensor, eos_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Tokens up to and including the first EOS. tokens: (N, T) -> (mask (N, T) bool, has_eos (N,) bool)."""
    is_eos = torch.isin(tokens, eos_ids)  # (N, T)
    before = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0  # (N, T) no EOS strictly before t
    return before, is_eos.any(dim=1)


@dataclass
class Rollouts:
    """One batch of rollouts and everything the loss needs, kept for ``num_iterations`` optimizer steps.

    N = B * G rows, group-contiguous (rows ``[i*G, (i+1)*G)`` answer prompt ``i``).
    """

    prompt: dict[str, Tensor]  # processor outputs for the B prompts (left-padded)
    prompt_pos: Tensor  # (3, B, Tp) M-RoPE positions of the prompts
    completion_ids: Tensor  # (N, Tc) sampled tokens, pad after EOS
    completion_mask: Tensor  # (N, Tc) float, 1 up to and including EOS
    advantages: Tensor  # (N,)
    sampler_logps: Tensor | None = None  # (N, Tc) the vLLM engine's log-probs of the sampled tokens (rollout=vllm)
    ref_logps: Tensor | None = None  # (N, Tc) reference log-probs (beta > 0), computed once
    old_logps: Tensor | None = None  # (N, Tc) set by the first optimizer step when num_iterations > 1
    uses: int = 0


class GRPOPolicy(VLMModule):
    """GRPO on VQA records with the MedGR2 composite reward (see the module docstring for one step).

    The batch is a list of VQA records (the dataloader's ``collate_fn`` is ``list``). ``rm_fn`` (an attribute,
    not an init argument, so it is neither saved as a hyperparameter nor pickled into checkpoints) scores the
    completions with ``R_phi``; ``None`` means no reward model (alpha term 0). It is built from
    ``reward_model`` (a path) when that is given.

    Args beyond :class:`VLMModule`'s:
        num_generations: G rollouts per prompt.
        max_new_tokens / temperature / top_p: sampling (temperature must be > 0: GRPO needs diverse rollouts).
        loss_type / epsilon / epsilon_high / beta / scale_rewards: TRL GRPO semantics (DESIGN.md §4); ``beta``
            is the KL weight, ``beta_match`` the weight of the answer-match indicator.
        num_iterations: optimizer steps per rollout batch (> 1 reuses rollouts with old log-probs).
        alpha / beta_match / format_weight / rescale_rm / rm_min / rm_max: the reward (paper Eq. 3).
        on_nan: ``skip`` (flag the batch, no update) or ``raise`` when a reward is NaN.
        max_nan_batches: consecutive skipped batches after which training stops (a broken reward model).
        max_grad_norm: gradient clipping (manual optimization does its own; 0/None disables).
        rollout: ``expand`` (prefill once per prompt, expand the KV cache), ``repeat`` (``generate``) or ``vllm``
            (an in-process vLLM engine whose weights follow the policy; needs vLLM and a GPU).
        vllm_options: ``vllm.LLM`` keyword arguments for ``rollout="vllm"`` (``stage.vllm``).
        hacking_window / hacking_threshold: reward-hacking monitor settings.
        log_flush_every: per-step diagnostics are sent to the logger in batches of this many steps.
    """

    def __init__(self, model: dict[str, Any], weights: str | None = None, lr: float = 1e-4,
                 weight_decay: float = 0.0, warmup_steps: int = 0, total_steps: int = 100,
                 eight_bit_optim: bool = False, lora: bool | None = None, *, num_generations: int = 4,
                 max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0, loss_type: str = "grpo",
                 epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
                 scale_rewards: str = "group", num_iterations: int = 1, alpha: float = 0.8, beta_match: float = 0.2,
                 format_weight: float = 0.0, rescale_rm: bool = True, rm_min: float = -6.0, rm_max: float = 10.0,
                 reward_model: str | None = None, reward_batch_size: int = 32, on_nan: str = "skip",
                 max_nan_batches: int = 10, max_grad_norm: float | None = 1.0,
                 instruction: str = SHORT_INSTRUCTION, rollout: str = "expand", hacking_window: int = 40,
                 hacking_threshold: float = 0.15, log_flush_every: int = 10,
                 vllm_options: dict[str, Any] | None = None):
        if rollout == "vllm":
            require_vllm()  # fail before the model is loaded, in one line
        super().__init__(model, weights=weights, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         total_steps=total_steps, eight_bit_optim=eight_bit_optim, lora=lora)
        if num_generations < 2:
            raise ValueError("num_generations must be >= 2: GRPO's advantages compare rollouts of one prompt")
        if temperature <= 0:
            raise ValueError("temperature must be > 0: GRPO samples its rollouts")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if scale_rewards not in SCALE_CHOICES:
            raise ValueError(f"scale_rewards must be one of {SCALE_CHOICES}, got {scale_rewards!r}")
        if on_nan not in ON_NAN:
            raise ValueError(f"on_nan must be one of {ON_NAN}, got {on_nan!r}")
        if rollout not in ROLLOUT_MODES:
            raise ValueError(f"rollout must be one of {ROLLOUT_MODES}, got {rollout!r}")
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.automatic_optimization = False
        self.G = int(num_generations)
        tok = self.processor.tokenizer
        self.collate = ChatCollator(self.processor, generation=True)
        self.pad_id = int(tok.pad_token_id)
        eos = {int(tok.convert_tokens_to_ids("<|im_end|>"))}
        gen_eos = getattr(self._hf().generation_config, "eos_token_id", None)
        eos.update([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))
        self.register_buffer("eos_ids", torch.tensor(sorted(eos)), persistent=False)
        self.is_peft = hasattr(self.model, "disable_adapter")
        # Reference policy for the KL term: LoRA -> the same weights with adapters off; else a frozen copy.
        self.ref_model = None
        if beta > 0 and not self.is_peft:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.rm_fn: RewardFn | None = (reward_model_fn(reward_model, instruction, reward_batch_size)
                                       if reward_model else None)
        self.monitor = HackingMonitor(hacking_window, hacking_threshold)
        self.history: list[dict[str, float]] = []  # per-step diagnostics (host floats), for tests and notebooks
        self.prompt_ids: list[str] = []  # ids of the records this process sampled rollouts for (an audit trail)
        self.nan_batches = 0
        self._consecutive_nan = 0
        self._buffer: Rollouts | None = None
        self._pending: list[tuple[int, dict[str, float]]] = []  # (step, metrics) rows not yet sent to the logger
        fwd = inspect.signature(self._hf().forward).parameters
        self._cache_kw = "cache" if "cache" in fwd else "past_key_values"  # renamed in transformers 5.x
        # rollout=vllm: the engine starts in on_train_start; the flag says an optimizer step changed the weights
        # since the last push. Rollouts dispatch on vllm_rollouts (a test may set its own engine there).
        self.vllm_rollouts: VLLMRollouts | None = None
        self._engine_stale = False
        if rollout == "vllm":
            if self.spec.quantization not in (None, "none"):
                raise ValueError("stage.rollout=vllm pushes full-precision merged weights into vLLM: use "
                                 f"model.quantization=none (got {self.spec.quantization!r})")
            self.vllm_rollouts = VLLMRollouts(sorted(eos), self.pad_id, vllm_options)

    def train(self, mode: bool = True) -> GRPOPolicy:
        """Lightning may switch the module to train mode; the frozen reference always stays in eval mode."""
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()
        return self

    # ------------------------------------------------------------------ FSDP2
    def shard(self, mesh, opts) -> None:
        """The policy as in :class:`VLMModule`; a frozen KL reference is sharded the same way."""
        super().shard(mesh, opts)
        if self.ref_model is not None:
            sharding.shard_vlm(self.ref_model, mesh, opts)

    def unshard_after_fit(self) -> None:
        super().unshard_after_fit()
        if sharding.is_sharded(self.ref_model):
            ref = sharding.gather_full_model(self.ref_model, self._rebuild_model, self.device)
            self.ref_model = ref.eval().requires_grad_(False)

    # ------------------------------------------------------------------ helpers
    def _hf(self):
        """The underlying ``Qwen2_5_VLForConditionalGeneration`` (inside a peft wrapper if LoRA)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def prompt_items(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The chat items (image + user text) of B records: one source for the HF and the vLLM prompts."""
        return [{"image": r["image"], "prompt": user_text(r, self.hparams.instruction), "prefix": "",
                 "target": ""} for r in records]

    def prompt_batch(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """Collate B records into left-padded prompt tensors on the module's device."""
        return {k: v.to(self.device) for k, v in model_inputs(self.collate(self.prompt_items(records))).items()}

    def vllm_prompts(self, records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[Any]]:
        """(prompt strings, RGB images) for vLLM: the strings the collator tokenizes, the images it encodes."""
        items = self.prompt_items(records)
        return ([self.collate.prompt_text(it) + it.get("prefix", "") for it in items],
                [to_rgb(it["image"]) for it in items])

    def _rope_index(self, prompt: Mapping[str, Tensor]) -> Tensor:
        """(3, B, Tp) M-RoPE positions of the prompts (computed once per prompt, reused by all G rollouts)."""
        kw = {"image_grid_thw": prompt.get("image_grid_thw"), "attention_mask": prompt["attention_mask"]}
        if "mm_token_type_ids" in prompt:
            kw["mm_token_type_ids"] = prompt["mm_token_type_ids"]
        pos, _ = self._hf().model.get_rope_index(prompt["input_ids"], **kw)
        return pos

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def generate(self, prompt: Mapping[str, Tensor], prompt_pos: Tensor) -> Tensor:
        """Sample G completions per prompt. Returns (N, Tc) token ids, pad after the first EOS."""
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling: rollouts come from the policy itself
        # Sharded (FSDP2): each unit is gathered once for the whole rollout, not once per decoded token.
        try:
            with sharding.gathered(self.model):
                tokens = self._sample(prompt, prompt_pos)
        finally:
            self.model.train(was_training)
        mask, _ = completion_mask(tokens, self.eos_ids)
        return tokens.masked_fill(~mask, self.pad_id)

    @torch.no_grad()
    def vllm_generate(self, records: Sequence[Mapping[str, Any]], timing: dict[str, float]) -> tuple[Tensor, Tensor]:
        """Sample G completions per record with the vLLM engine, after pushing the weights if a step changed them.

        Returns ((N, Tc) token ids, pad after the first EOS, group-contiguous; (N, Tc) sampler log-probs) on the
        module's device. Sample seeds are drawn from torch's RNG (seeded by ``seed_everything``).
        """
        hp, engine = self.hparams, self.vllm_rollouts
        assert engine is not None
        if engine.llm is None:  # rollouts outside fit() (a notebook): start from the policy as it is
            engine.start(self.model, self.processor)
            self._engine_stale = False
        if self._engine_stale:
            t0 = time.perf_counter()
            engine.sync(self.model)
            self._engine_stale = False
            timing["time/weight_sync"] = time.perf_counter() - t0
        prompts, images = self.vllm_prompts(records)
        seed = int(torch.randint(0, 2**31 - 1 - len(records) * self.G, ()).item())
        tokens, logps = engine.sample(prompts, images, self.G, temperature=float(hp.temperature),
                                      top_p=float(hp.top_p), max_tokens=int(hp.max_new_tokens), seed=seed)
        return tokens.to(self.device), logps.to(self.device)

    def _sample(self, prompt: Mapping[str, Tensor], prompt_pos: Tensor) -> Tensor:
        hp = self.hparams
        if hp.rollout == "repeat":
            out = self.model.generate(
                **prompt, do_sample=True, temperature=hp.temperature, top_p=hp.top_p, top_k=0,
                max_new_tokens=hp.max_new_tokens, num_return_sequences=self.G, pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids.tolist())
            return out[:, prompt["input_ids"].shape[1]:]  # (N, Tc)
        return self._generate_expand(prompt, prompt_pos)

    def _generate_expand(self, prompt: Mapping[str, Tensor], prompt_pos: Tensor) -> Tensor:
        """Prefill each prompt once (image encoded once), expand the KV cache to G rows, decode N rows at once."""
        hp, G = self.hparams, self.G
        hf = self._hf()
        out = self.model(**prompt, position_ids=prompt_pos, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(G)  # (B, ...) -> (N, ...), group-contiguous
        logits = out.logits[:, -1].repeat_interleave(G, dim=0)  # (N, V)
        N, Tp, T = logits.shape[0], prompt["attention_mask"].shape[1], hp.max_new_tokens
        mask = torch.ones(N, Tp + T, dtype=prompt["attention_mask"].dtype, device=logits.device)  # (N, Tp+T)
        mask[:, :Tp] = prompt["attention_mask"].repeat_interleave(G, dim=0)  # finished rows' outputs are ignored
        # Text after the prompt continues 1-D positions from max(prompt positions) + 1 in all 3 M-RoPE axes.
        next_pos = (prompt_pos.amax(dim=(0, 2)) + 1).repeat_interleave(G)  # (N,)
        tokens = torch.full((N, T), self.pad_id, dtype=torch.long, device=logits.device)  # (N, T)
        done = torch.zeros(N, dtype=torch.bool, device=logits.device)
        # Decode through the text decoder + LM head directly: the multimodal wrapper has nothing to add once
        # the image sits in the cache, and its per-call overhead is a large share of a small model's step.
        text_model, lm_head = hf.model.language_model, hf.lm_head
        # With SDPA and only full-attention layers the decode mask is a slice of one precomputed boolean tensor
        # (True = attend): rebuilding it from the 2-D mask is ~15% of a small model's decode step.
        tcfg = text_model.config
        mask4d = None
        if tcfg._attn_implementation == "sdpa" and set(getattr(tcfg, "layer_types", None) or ["full_attention"]) \
                == {"full_attention"}:
            mask4d = mask.bool()[:, None, None, :]  # (N, 1, 1, Tp+T)
        t = 0
        for t in range(T):
            tok = sample_tokens(logits, hp.temperature, hp.top_p).masked_fill(done, self.pad_id)  # (N,)
            tokens[:, t] = tok
            done = done | torch.isin(tok, self.eos_ids)
            if t == T - 1 or bool(done.all()):
                break
            pos = (next_pos + t).view(1, N, 1).expand(3, N, 1)  # (3, N, 1)
            step_mask = (mask[:, : Tp + t + 1] if mask4d is None
                         else {"full_attention": mask4d[..., : Tp + t + 1]})  # (N, Tp+t+1) or (N, 1, 1, Tp+t+1)
            h = text_model(input_ids=tok.unsqueeze(1), attention_mask=step_mask, position_ids=pos, use_cache=True,
                           **{self._cache_kw: cache})
            cache = getattr(h, "cache", None) or h.past_key_values
            logits = lm_head(h.last_hidden_state[:, -1])  # (N, V)
        return tokens[:, : t + 1]

    # ------------------------------------------------------------------ log-probs
    def completion_logps(self, model, ro: Rollouts, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """Per-token log-probs of the sampled completions under ``model`` from ONE forward over the N rows.

        Each prompt's image features are computed once and shared by its G rows (their gradients add up), and
        positions come from the prompt's cached M-RoPE index, so no per-row Python runs here. Logits are divided
        by the sampling temperature (TRL). Returns ((N, Tc) log-probs, (N, Tc) entropies or None).

        Under FSDP2 the whole computation is one forward of the sharded root (:func:`sharding.root_call`): the
        token embedding and the image features are direct submodule calls.
        """
        return sharding.root_call(model, self._completion_logps, model, ro, with_entropy)

    def _completion_logps(self, model, ro: Rollouts, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        G, p = self.G, ro.prompt
        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        Tp, Tc = p["input_ids"].shape[1], ro.completion_ids.shape[1]
        ids = torch.cat([p["input_ids"].repeat_interleave(G, dim=0), ro.completion_ids], dim=1)  # (N, T)
        attn = torch.cat([p["attention_mask"].repeat_interleave(G, dim=0),
                          ro.completion_mask.to(p["attention_mask"].dtype)], dim=1)  # (N, T)
        next_pos = ro.prompt_pos.amax(dim=(0, 2)) + 1  # (B,)
        comp_pos = next_pos.view(1, -1, 1) + torch.arange(Tc, device=ids.device).view(1, 1, -1)  # (1, B, Tc)
        pos = torch.cat([ro.prompt_pos, comp_pos.expand(3, -1, -1)], dim=2).repeat_interleave(G, dim=1)  # (3,N,T)
        embeds = hf.get_input_embeddings()(ids)  # (N, T, D)
        if "pixel_values" in p:
            feats = hf.model.get_image_features(p["pixel_values"], p["image_grid_thw"], return_dict=True)
            per_image = feats.pooler_output  # B tensors (n_i, D): one image per prompt
            img = torch.cat([f for f in per_image for _ in range(G)], dim=0).to(embeds.dtype)  # (sum n_i * G, D)
            # Only prompt positions: a policy may sample the image-pad token itself, which is no image slot.
            img_mask = torch.zeros_like(ids, dtype=torch.bool)  # (N, T)
            img_mask[:, :Tp] = p["input_ids"].repeat_interleave(G, dim=0) == hf.config.image_token_id
            img_mask = img_mask.unsqueeze(-1)  # (N, T, 1)
            embeds = embeds.masked_scatter(img_mask, img)
        out = sharding.forward_fn(model)(inputs_embeds=embeds, attention_mask=attn, position_ids=pos,
                                         use_cache=False, logits_to_keep=Tc + 1)
        logits = out.logits[:, :-1].float() / self.hparams.temperature  # (N, Tc, V) predicts completion token t
        lse = logits.logsumexp(dim=-1)  # (N, Tc)
        logps = logits.gather(-1, ro.completion_ids.unsqueeze(-1)).squeeze(-1) - lse  # (N, Tc)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = lse - (logits.softmax(dim=-1) * logits).sum(dim=-1)  # (N, Tc)
        return logps, entropy

    # ------------------------------------------------------------------ rewards
    def score(self, records: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> dict[str, Tensor]:
        """Reward components of N completions (records repeated G times): rm, match, format, total — (N,) each."""
        hp = self.hparams
        rescale = hp.rescale_rm
        if self.rm_fn is not None:
            rm = torch.as_tensor(self.rm_fn(records, texts), dtype=torch.float32).reshape(-1)  # (N,)
            if rm.shape[0] != len(texts):
                raise ValueError(f"rm_fn returned {rm.shape[0]} scores for {len(texts)} completions")
        else:
            rm = torch.zeros(len(texts))  # no reward model: the alpha term vanishes (0 after rescaling too)
            rescale = False
        preds = [extract_answer(t) for t in texts]
        comps = composite_reward_components(
            rm, preds, [r["answer"] for r in records], alpha=hp.alpha, beta=hp.beta_match,
            format_scores=[format_reward(t) for t in texts], format_weight=hp.format_weight,
            rescale_rm=rescale, rm_min=hp.rm_min, rm_max=hp.rm_max)
        return {k: v.to(self.device) for k, v in comps.items()}

    # ------------------------------------------------------------------ one rollout batch
    def make_rollouts(self, records: Sequence[Mapping[str, Any]]) -> tuple[Rollouts | None, dict[str, Any]]:
        """Generate, score and compute advantages for B records. Returns (rollouts or None if skipped, stats)."""
        hp, G = self.hparams, self.G
        timing: dict[str, float] = {}  # time/generate covers prompt encoding (collation) + sampling
        t0 = time.perf_counter()
        self.prompt_ids.extend(str(r.get("id", "")) for r in records)
        prompt = self.prompt_batch(records)
        prompt_pos = self._rope_index(prompt)  # (3, B, Tp)
        sampler_logps = None
        if self.vllm_rollouts is not None:
            tokens, sampler_logps = self.vllm_generate(records, timing)  # (N, Tc) each
        else:
            tokens = self.generate(prompt, prompt_pos)  # (N, Tc)
        mask, has_eos = completion_mask(tokens, self.eos_ids)  # (N, Tc)
        self._sync()
        t1 = time.perf_counter()
        texts = self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        recs = [r for r in records for _ in range(G)]
        comps = self.score(recs, texts)
        t2 = time.perf_counter()
        timing.update({"time/generate": t1 - t0, "time/reward": t2 - t1})
        stats: dict[str, Any] = {
            "reward_mean": comps["total"].mean(), "reward_std": comps["total"].std(),
            "reward_rm": comps["rm"].mean(), "reward_match": comps["match"].mean(),
            "reward_format": comps["format"].mean(), "accuracy": comps["match"].mean(),
            "format_rate": comps["format"].mean(), "completion_len": mask.sum(dim=1).float().mean(),
            "truncated_frac": (~has_eos).float().mean(), **timing,
        }
        rewards = comps["total"]  # (N,)
        nan_rows = torch.isnan(rewards)
        bad = bool(nan_rows.any())
        if self.trainer_world_size() > 1:  # every rank must agree to skip, or DDP's all-reduce would hang
            bad = bool(self.trainer.strategy.reduce(torch.tensor(float(bad), device=self.device),
                                                    reduce_op="max") > 0)
        if bad:
            idx = nan_rows.nonzero().flatten().tolist()
            if hp.on_nan == "raise":
                self.flush_logs()
                where = f"rows {idx[:10]}" if idx else "on another rank"
                raise FloatingPointError(
                    f"NaN reward for {len(idx)} of {rewards.numel()} completions ({where}): the reward model is "
                    "broken or diverged. Set stage.on_nan=skip to skip such batches instead.")
            self.nan_batches += 1
            self._consecutive_nan += 1
            log.warning("NaN reward in %d completions: batch skipped (%d so far)", len(idx), self.nan_batches)
            for k in ("reward_mean", "reward_std", "reward_rm"):
                stats.pop(k)  # NaN by construction; the nan_batches counter tells the story
            return None, stats
        self._consecutive_nan = 0
        adv = group_advantages(rewards, G, scale=hp.scale_rewards)  # (N,)
        stats["zero_var_frac"] = (rewards.view(-1, G).amax(1) == rewards.view(-1, G).amin(1)).float().mean()
        ro = Rollouts(prompt=prompt, prompt_pos=prompt_pos, completion_ids=tokens,
                      completion_mask=mask.float(), advantages=adv, sampler_logps=sampler_logps)
        if hp.beta > 0:
            with torch.no_grad():
                if self.is_peft:
                    with self.model.disable_adapter():  # base weights = the reference, no second copy
                        ro.ref_logps, _ = self.completion_logps(self.model, ro)
                else:
                    ro.ref_logps, _ = self.completion_logps(self.ref_model, ro)
        return ro, stats

    def policy_loss(self, ro: Rollouts) -> tuple[Tensor, dict[str, Tensor]]:
        """GRPO loss of the current policy on stored rollouts (one forward); stores old log-probs if reused."""
        hp = self.hparams
        logps, entropy = self.completion_logps(self.model, ro, with_entropy=True)  # (N, Tc) each
        if hp.num_iterations > 1 and ro.old_logps is None:
            # The policy that sampled the rollouts *is* the current one at their first use: its detached
            # log-probs are the old ones for the later iterations, no extra forward needed.
            ro.old_logps = logps.detach()
        old = None if ro.uses == 0 else ro.old_logps
        n_items = None
        if hp.loss_type == "dapo" and self.trainer_world_size() > 1:
            n_items = self.trainer.strategy.reduce(ro.completion_mask.sum(), reduce_op="sum") / \
                self.trainer_world_size()
        loss, stats = grpo_loss_with_stats(
            logps, old, ro.ref_logps, ro.advantages, ro.completion_mask, epsilon_low=hp.epsilon,
            epsilon_high=hp.epsilon_high, beta=hp.beta, loss_type=hp.loss_type,
            max_completion_length=hp.max_new_tokens, num_items_in_batch=n_items)
        m = ro.completion_mask
        stats["entropy"] = (entropy * m).sum() / m.sum().clamp(min=1.0)
        if ro.uses == 0 and ro.sampler_logps is not None:
            # Mean |policy - sampler| log-prob of the sampled tokens: ~0 (dtype noise) when the engine holds the
            # policy's weights; it grows if a push was missed. Comparable at any temperature with vLLM's processed
            # log-probs (its raw ones: temperature 1 only), and only at top_p 1 (vLLM renormalises the nucleus).
            ok = m.bool() & torch.isfinite(ro.sampler_logps)  # (N, Tc)
            if bool(ok.any()):  # none: the engine returned no log-probs, and there is nothing to compare
                gap = (logps.detach() - ro.sampler_logps).abs()  # (N, Tc)
                stats["vllm_logp_gap"] = gap[ok].mean()
        ro.uses += 1
        return loss, stats

    # ------------------------------------------------------------------ Lightning
    def trainer_world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _sync(self) -> None:
        if self.device.type == "cuda":  # honest phase timings on GPU
            torch.cuda.synchronize(self.device)

    def training_step(self, batch: Sequence[Mapping[str, Any]], batch_idx: int) -> None:
        hp = self.hparams
        opt = self.optimizers()
        sched = self.lr_schedulers()
        stats: dict[str, Any] = {}
        if self._buffer is None or self._buffer.uses >= hp.num_iterations:
            self._buffer = None
            ro, stats = self.make_rollouts(batch)
            if ro is None:  # NaN rewards, on_nan=skip: flag it, no update
                self._log_step({**stats, "nan_batches": float(self.nan_batches), "skipped": 1.0}, len(batch))
                # Skipped batches do not count as optimizer steps, so a reward model that always gives NaN
                # would never reach max_steps: stop it.
                if self._consecutive_nan >= hp.max_nan_batches:
                    self.flush_logs()
                    raise FloatingPointError(f"{self._consecutive_nan} consecutive batches with NaN rewards: the "
                                             "reward model is broken (stage.max_nan_batches)")
                return None
            self._buffer = ro
        ro = self._buffer
        t0 = time.perf_counter()
        loss, loss_stats = self.policy_loss(ro)
        self._sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if hp.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=float(hp.max_grad_norm), gradient_clip_algorithm="norm")
        opt.step()
        if sched is not None:
            sched.step()
        if self.vllm_rollouts is not None:
            self._engine_stale = True  # pushed before the next rollout, not now: num_iterations > 1 reuses rollouts
        self._sync()
        t2 = time.perf_counter()
        stats.update(loss_stats)
        stats.update({"loss": loss.detach(), "time/logp_forward": t1 - t0, "time/backward": t2 - t1,
                      "nan_batches": float(self.nan_batches), "skipped": 0.0, "rollout_reuse": float(ro.uses - 1)})
        self._log_step(stats, len(batch))
        return None

    def _log_step(self, stats: Mapping[str, Any], batch_size: int) -> None:
        """Record one step's diagnostics: one host transfer for all tensor stats, the hacking monitor, the logger.

        Every step is recorded (``self.history`` and the logger), but rows reach the logger in batches of
        ``log_flush_every`` steps: per step, Lightning's ``self.log`` bookkeeping (~2 ms a key) and one MLflow
        SQLite write (~50 ms) cost as much as the GRPO step of the tiny model. Only the progress-bar values go
        through ``self.log``.
        """
        keys = [k for k, v in stats.items() if isinstance(v, Tensor)]
        values: list[float] = []
        if keys:
            vec = torch.stack([stats[k].detach().float().reshape(()) for k in keys])  # (K,)
            if self.trainer_world_size() > 1:  # one collective for all stats: every rank logs the global means
                vec = self.trainer.strategy.reduce(vec, reduce_op="mean")
            values = vec.tolist()
        row = {k: float(v) for k, v in stats.items() if not isinstance(v, Tensor)}
        row.update(dict(zip(keys, values, strict=True)))
        if "format_rate" in row and "accuracy" in row:
            row["reward_hacking"] = float(self.monitor.update(row["format_rate"], row["accuracy"]))
        step = int(self.global_step)
        self.history.append({**row, "step": float(step)})
        self._pending.append((step, {f"train/{k}": v for k, v in row.items() if math.isfinite(v)}))
        if len(self._pending) >= max(1, int(self.hparams.log_flush_every)):
            self.flush_logs()
        for k in ("reward_mean", "accuracy", "loss"):
            if k in row and math.isfinite(row[k]):
                self.log(f"train/{k}", row[k], batch_size=batch_size, prog_bar=True, logger=False)

    def flush_logs(self) -> None:
        """Write the buffered per-step rows to the trainer's loggers (MLflow: one ``log_batch`` for all)."""
        pending, self._pending = self._pending, []
        if not pending or self._trainer is None or not self.trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import MLFlowLogger

        for logger in self.loggers:
            if isinstance(logger, MLFlowLogger):
                from mlflow.entities import Metric

                ts = int(time.time() * 1000)
                metrics = [Metric(k, v, ts, step) for step, row in pending for k, v in row.items()]
                for i in range(0, len(metrics), 1000):  # MLflow's per-request limit
                    logger.experiment.log_batch(logger.run_id, metrics=metrics[i : i + 1000])
            else:
                for step, row in pending:
                    logger.log_metrics(row, step=step)

    def on_train_start(self) -> None:
        """rollout=vllm: start the engine from the policy as it is now (after sharding, device moves, a resume)."""
        if self.vllm_rollouts is not None and self.vllm_rollouts.llm is None:
            self.vllm_rollouts.start(self.model, self.processor)
            self._engine_stale = False

    def on_train_end(self) -> None:
        self.flush_logs()
        if self.vllm_rollouts is not None:
            self.vllm_rollouts.close()  # its GPU memory goes back before evaluation (and the loop's next stage)
