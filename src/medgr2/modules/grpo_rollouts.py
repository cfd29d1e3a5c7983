"""GRPO rollouts: prompts, sampling (``expand`` / ``repeat`` / ``vllm``) and the log-probs of what was sampled.

:class:`RolloutMixin` is the sampling half of :class:`medgr2.modules.grpo.GRPOPolicy` (which owns ``self.model``,
``self.processor``, ``self.cfg``, ``self.G``, ``self.eos_ids``, ``self.pad_id``, ``self.collate`` and
``self.vllm_rollouts``). Every mode samples from ``softmax(logits / temperature)`` with top-k / top-p applied and
the *same* knobs passed explicitly (a checkpoint's generation config is never inherited), and the loss scores the
sampled tokens under ``logits / temperature``:

- ``expand`` (default): each prompt is encoded and prefilled once; its KV cache is expanded to its G rows and the
  N = B*G rows are decoded together (~0.7x the time of ``repeat`` on the tiny VLM, one CPU thread);
- ``repeat``: ``model.generate`` on G copies of each prompt (TRL's way);
- ``vllm``: an in-process vLLM engine (:mod:`medgr2.training.vllm_rollouts`, GPU), whose log-probs of the sampled
  tokens come back too, for the truncated importance-sampling correction.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from medgr2.data.collate import model_inputs, to_rgb
from medgr2.data.prompting import chat_item
from medgr2.models.adapters import unwrap
from medgr2.models.decoding import sampling
from medgr2.training import sharding


def sample_tokens(logits: Tensor, temperature: float, top_p: float, top_k: int = 0) -> Tensor:
    """Sample one token per row from ``softmax(logits / temperature)`` restricted to the top-k tokens (0: all)
    and then to the top-p nucleus (the order of HF's and vLLM's samplers).

    logits: (N, V) -> (N,) token ids. The most likely token always stays in.
    """
    logits = logits.float() / temperature  # (N, V)
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
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
    is_weights: Tensor | None = None  # (N, Tc) truncated importance-sampling weights policy/sampler (rollout=vllm)
    ref_logps: Tensor | None = None  # (N, Tc) reference log-probs (beta > 0), computed once
    old_logps: Tensor | None = None  # (N, Tc) set by the first optimizer step when num_iterations > 1
    uses: int = 0


class RolloutMixin:
    """Prompts, rollouts and completion log-probs for :class:`medgr2.modules.grpo.GRPOPolicy`."""

    def _hf(self):
        """The underlying ``Qwen2_5_VLForConditionalGeneration`` (inside a peft wrapper if LoRA)."""
        return unwrap(self.model)

    def prompt_items(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The chat items (image + user text) of B records: one source for the HF and the vLLM prompts."""
        return [chat_item(r, self.cfg.rollout.instruction) for r in records]

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
        rc, engine = self.cfg.rollout, self.vllm_rollouts
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
        tokens, logps = engine.sample(prompts, images, self.G, temperature=float(rc.temperature),
                                      top_p=float(rc.top_p), top_k=int(rc.top_k),
                                      repetition_penalty=float(rc.repetition_penalty),
                                      max_tokens=int(rc.max_new_tokens), seed=seed)
        return tokens.to(self.device), logps.to(self.device)

    def _sample(self, prompt: Mapping[str, Tensor], prompt_pos: Tensor) -> Tensor:
        rc = self.cfg.rollout
        if rc.rollout == "repeat":
            # Every sampling knob explicitly (models/decoding.py): generate() otherwise applies the checkpoint's
            # generation_config (Qwen2.5-VL ships repetition_penalty 1.05), and the loss would score another
            # distribution.
            out = self.model.generate(
                **prompt, **sampling(rc.temperature, rc.top_p, rc.top_k, rc.repetition_penalty),
                max_new_tokens=rc.max_new_tokens, num_return_sequences=self.G, pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids.tolist())
            return out[:, prompt["input_ids"].shape[1]:]  # (N, Tc)
        return self._generate_expand(prompt, prompt_pos)

    def _generate_expand(self, prompt: Mapping[str, Tensor], prompt_pos: Tensor) -> Tensor:
        """Prefill each prompt once (image encoded once), expand the KV cache to G rows, decode N rows at once."""
        rc, G = self.cfg.rollout, self.G
        hf = self._hf()
        out = self.model(**prompt, position_ids=prompt_pos, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(G)  # (B, ...) -> (N, ...), group-contiguous
        logits = out.logits[:, -1].repeat_interleave(G, dim=0)  # (N, V)
        N, Tp, T = logits.shape[0], prompt["attention_mask"].shape[1], rc.max_new_tokens
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
            tok = sample_tokens(logits, rc.temperature, rc.top_p, rc.top_k).masked_fill(done, self.pad_id)  # (N,)
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
        hf = unwrap(model)
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
        logits = out.logits[:, :-1].float() / self.cfg.rollout.temperature  # (N, Tc, V) predicts completion token t
        lse = logits.logsumexp(dim=-1)  # (N, Tc)
        logps = logits.gather(-1, ro.completion_ids.unsqueeze(-1)).squeeze(-1) - lse  # (N, Tc)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = lse - (logits.softmax(dim=-1) * logits).sum(dim=-1)  # (N, Tc)
        return logps, entropy
