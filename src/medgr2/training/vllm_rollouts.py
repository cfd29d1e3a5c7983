"""GRPO rollouts from an in-process vLLM engine whose weights follow the policy (``stage.rollout=vllm``).

Colocated, as TRL's ``vllm_mode="colocate"``: one ``vllm.LLM`` lives in each training process, on that process's
GPU, next to the policy (``gpu_memory_utilization`` bounds its share). :class:`VLLMRollouts` is the whole
interface :class:`medgr2.modules.grpo.GRPOPolicy` sees:

- :meth:`VLLMRollouts.start` writes the policy as a checkpoint folder (config, generation config, processor, and
  the tensors of :func:`policy_weights`) and starts the engine from it, ``limit_mm_per_prompt={"image": 1}``;
- :meth:`VLLMRollouts.sync` pushes the policy's current tensors into the engine's model (its ``load_weights``,
  reached through ``LLM.apply_model``) and drops the prefix cache, which holds KV blocks of the old weights;
- :meth:`VLLMRollouts.sample` samples G completions per prompt and returns them as the ``(N, Tc)`` token tensor
  of the HF rollout path (:func:`pack_completions`), plus vLLM's log-probs of the sampled tokens.

The engine core must run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set by :meth:`start`): then
``apply_model`` calls our function directly and the pushed tensors are passed by reference, not serialized.
Tensor parallelism inside vLLM is not supported (``load_weights`` receives full tensors).

:func:`policy_weights` yields exactly the tensors that ``save_pretrained`` writes, under the names it writes:
LoRA adapters merged into their base weights (computed, the policy is not modified), FSDP2 shards gathered one
tensor at a time (a collective: every rank iterates in the same order), tied copies dropped, and transformers 5's
load-time renames reverted. vLLM loads the start folder and every later push through the same name mapping.

Not exercised on a GPU so far (no GPU was available to this project): ``tests/test_gpu.py`` runs it for real;
``tests/test_grpo_vllm.py`` tests the glue on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import importlib.util
import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medgr2.models.adapters import unwrap
from medgr2.utils.optional import VLLM_HINT, VLLMNotInstalledError

log = logging.getLogger(__name__)

#: The one-line error of ``stage.rollout=vllm`` without vLLM (the generator's hint, pointed at GRPO's CPU path).
ROLLOUT_HINT = VLLM_HINT.replace("backend=hf", "stage.rollout=expand")


def require_vllm() -> None:
    """Raise :class:`VLLMNotInstalledError` (one line, how to install) when vLLM cannot be imported."""
    if importlib.util.find_spec("vllm") is None:
        raise VLLMNotInstalledError(ROLLOUT_HINT)


# ============================================================================================ weights


def _full(t: Tensor) -> Tensor:
    """The whole tensor: an FSDP2 shard (DTensor) is all-gathered (collective), anything else is returned as is."""
    full_tensor = getattr(t, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else t


def _lora_layers(hf: nn.Module) -> dict[str, nn.Module]:
    """``{module prefix: peft LoRA layer}`` for every LoRA-wrapped module of ``hf`` (empty without peft)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {name: mod for name, mod in hf.named_modules() if isinstance(mod, LoraLayer)}


def _lora_delta(layer: nn.Module) -> Tensor | None:
    """Sum over the active adapters of ``scaling * B @ A`` (out, in) in float32; None when nothing to add.

    Computed from full tensors, so it also works on FSDP2 shards; the layer itself is left untouched (merging and
    unmerging in place would leave rounding drift in the trained base weights).
    """
    if layer.merged or layer.disable_adapters:  # merged: already in the base weight; disabled: not applied
        return None
    delta = None
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if layer.use_dora.get(name, False):
            raise NotImplementedError("vLLM rollouts merge plain LoRA adapters only, not DoRA")
        a, b = layer.lora_A[name], layer.lora_B[name]
        if not (isinstance(a, nn.Linear) and isinstance(b, nn.Linear)):
            raise NotImplementedError(f"vLLM rollouts merge LoRA on Linear layers only, not {type(a).__name__}")
        d = (_full(b.weight).float() @ _full(a.weight).float()) * float(layer.scaling[name])  # (out, in)
        if getattr(layer, "fan_in_fan_out", False):
            d = d.T
        delta = d if delta is None else delta + d
    return delta


def _checkpoint_names(hf: nn.Module, names: list[str]) -> dict[str, str]:
    """``{in-memory name: the name save_pretrained writes}``.

    transformers 5 renames some checkpoint keys when loading (Qwen2.5-VL: ``model.layers.*`` is loaded as
    ``model.language_model.layers.*``) and reverts that when saving; vLLM loads the saved names. The reversal is
    traced with distinct placeholder tensors, so only pure renames are accepted.
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: keys are saved as they are named in memory
        return {n: n for n in names}
    marks = {n: torch.empty(0) for n in names}
    back = {id(t): n for n, t in marks.items()}
    reverted = revert_weight_conversion(hf, dict(marks))
    out = {back[id(t)]: new for new, t in reverted.items() if id(t) in back}
    if len(out) != len(names):
        raise NotImplementedError(f"{type(hf).__name__}: its checkpoint conversion is not a pure renaming "
                                  "(e.g. fused expert weights); vLLM rollouts cannot push its weights")
    return out


def policy_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(checkpoint name, tensor)`` for every tensor ``save_pretrained`` writes for ``model``, one at a time.

    - a peft model yields its *merged* weights: ``base + scaling * B @ A`` under the base name (no ``base_layer``,
      no ``lora_*`` tensors), as :meth:`medgr2.modules.sft.VLMModule.export` writes after ``merge_and_unload``;
    - FSDP2 shards are gathered per tensor (collective: call it on every rank);
    - a tensor tied to another (``lm_head.weight`` = the token embedding) is yielded once, under the name that
      is kept on save;
    - names are the saved ones (:func:`_checkpoint_names`).

    Tensors are detached; unsharded, unmerged ones are the live parameters (no copy), so consume each before the
    next optimizer step. Shapes and dtypes are those of the parameters.
    """
    hf = unwrap(model)
    lora = _lora_layers(hf)
    tied = set(getattr(hf, "_tied_weights_keys", None) or ())
    # plain name -> (tensor, LoRA layer whose merged weight it is, or None)
    entries: dict[str, tuple[Tensor, nn.Module | None]] = {}
    by_id: dict[int, str] = {}
    for key, tensor in hf.state_dict(keep_vars=True).items():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
            continue  # adapter factors are merged below; peft's copy of a modules_to_save original is not saved
        name = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        layer = None
        if ".base_layer." in key and parts[-1] == "weight":
            layer = lora.get(key.split(".base_layer.")[0])
        seen = by_id.get(id(tensor))
        if seen is not None:  # a tied copy: keep the name transformers keeps (not the one in _tied_weights_keys)
            if seen in tied and name not in tied:
                entries[name] = entries.pop(seen)
                by_id[id(tensor)] = name
            continue
        by_id[id(tensor)] = name
        entries[name] = (tensor, layer)
    names = _checkpoint_names(hf, list(entries))
    with torch.no_grad():
        for name, (tensor, layer) in entries.items():
            full = _full(tensor.detach())
            delta = _lora_delta(layer) if layer is not None else None
            if delta is not None:
                full = (full.float() + delta.to(full.device)).to(full.dtype)
            yield names[name], full


def write_engine_checkpoint(model: nn.Module, processor: Any, folder: str | Path) -> Path:
    """A ``from_pretrained`` folder of the policy for vLLM: config, generation config, processor, weights.

    Weights come from :func:`policy_weights` (merged, gathered), so the folder is what ``export()`` would write;
    the processor is the module's own (pinned image size included), so vLLM cuts images into as many tokens as
    the HF path does. Collective under FSDP2. Returns ``folder``.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = unwrap(model)
    config = copy.deepcopy(hf.config)
    config.architectures = [type(hf).__name__]  # vLLM picks its model class from this
    config.save_pretrained(folder)
    if getattr(hf, "generation_config", None) is not None:
        hf.generation_config.save_pretrained(folder)
    processor.save_pretrained(folder)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in policy_weights(model)}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


# ============================================================================================ completions


def completion_tokens(output: Any, eos_ids: Sequence[int]) -> tuple[list[int], list[float]]:
    """Token ids and sampled-token log-probs of one vLLM ``CompletionOutput``.

    A completion that stopped on a stop token but does not end with it gets the token appended (log-prob NaN:
    unknown), so that the EOS is trained like on the HF path. Log-probs are NaN where vLLM returned none.
    """
    ids = [int(t) for t in output.token_ids]
    lps: list[float] = []
    for i, tok in enumerate(ids):
        entry = output.logprobs[i] if output.logprobs is not None and i < len(output.logprobs) else None
        lp = entry.get(tok) if hasattr(entry, "get") else None  # {token id: Logprob} per position
        lps.append(float(getattr(lp, "logprob", lp)) if lp is not None else math.nan)
    eos = set(eos_ids)
    if output.finish_reason == "stop" and (not ids or ids[-1] not in eos):
        stop = output.stop_reason
        ids.append(int(stop) if isinstance(stop, int) and stop in eos else int(eos_ids[0]))
        lps.append(math.nan)
    return ids, lps


def pack_completions(seqs: Sequence[Sequence[int]], eos_ids: Sequence[int], pad_id: int,
                     logps: Sequence[Sequence[float]] | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-sample token lists -> the ``(N, Tc)`` tensor the HF rollout path returns.

    Row order is kept (pass them group-contiguous: the G samples of prompt i at rows ``[i*G, (i+1)*G)``).
    Each row is cut after its first EOS and right-padded with ``pad_id``; ``Tc`` is the longest row (at least 1).
    ``logps`` (same shape as ``seqs``) come back as ``(N, Tc)`` float32, 0 on padding. Returns (tokens, logps).
    """
    eos = set(int(e) for e in eos_ids)
    cut = []
    for row in seqs:
        row = [int(t) for t in row]
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        cut.append(row[:end])
    n, width = len(cut), max([1, *(len(r) for r in cut)])
    tokens = torch.full((n, width), int(pad_id), dtype=torch.long)  # (N, Tc)
    out_lp = None if logps is None else torch.zeros(n, width, dtype=torch.float32)  # (N, Tc)
    for i, row in enumerate(cut):
        if row:
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            if out_lp is not None:
                out_lp[i, : len(row)] = torch.tensor(list(logps[i])[: len(row)], dtype=torch.float32)
    return tokens, out_lp


# ============================================================================================ engine


class VLLMRollouts:
    """A colocated vLLM engine for GRPO: :meth:`start`, :meth:`sync`, :meth:`sample`, :meth:`close`.

    Args:
        eos_ids: token ids that end a completion (the HF path's ``eos_ids``); passed as ``stop_token_ids``.
        pad_id: filler after the EOS in the returned token tensor.
        options: ``vllm.LLM`` keyword arguments (``stage.vllm``: gpu_memory_utilization, enforce_eager, dtype,
            max_model_len, ...); ``None`` values are dropped.
        seed: the engine's seed (per-request seeds are passed to :meth:`sample`).
        vllm_module: the ``vllm`` module, or a stand-in with ``LLM`` and ``SamplingParams`` (tests); imported
            when None, which raises :class:`VLLMNotInstalledError` without vLLM.
    """

    def __init__(self, eos_ids: Sequence[int], pad_id: int, options: Mapping[str, Any] | None = None,
                 seed: int = 0, vllm_module: Any = None):
        if vllm_module is None:
            require_vllm()
            import vllm as vllm_module
        self._vllm = vllm_module
        self.eos_ids = [int(e) for e in eos_ids]
        self.pad_id = int(pad_id)
        self.options = {k: v for k, v in dict(options or {}).items() if v is not None}
        self.seed = int(seed)
        self.llm: Any = None
        self.folder: Path | None = None
        self.syncs = 0
        self.missing: list[str] = []  # engine parameters the last push did not cover (they would go stale)
        self._cleanup: weakref.finalize | None = None

    # ------------------------------------------------------------------ lifecycle
    def _engine_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"limit_mm_per_prompt": {"image": 1}, "seed": self.seed}
        engine_args = getattr(self._vllm, "EngineArgs", None)
        fields = {f.name for f in dataclasses.fields(engine_args)} if dataclasses.is_dataclass(engine_args) else set()
        if "logprobs_mode" in fields:
            # Log-probs after temperature scaling, like the policy's (logits / temperature): the logged gap
            # between sampler and policy is then a weight-sync check at any temperature (at top_p 1).
            kw["logprobs_mode"] = "processed_logprobs"
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # One engine per training process (data parallel), reusing the trainer's process group (TRL's way).
            kw["distributed_executor_backend"] = "external_launcher"
            kw["seed"] = self.seed + torch.distributed.get_rank()
        kw.update(self.options)
        return kw

    def start(self, model: nn.Module, processor: Any) -> None:
        """Write the policy to a temporary checkpoint folder and start the engine from it (collective under FSDP2)."""
        if self.llm is not None:
            return
        self.folder = Path(tempfile.mkdtemp(prefix="medgr2_vllm_"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        write_engine_checkpoint(model, processor, self.folder)
        # The engine core in this process: apply_model() then runs our function on the model directly and the
        # pushed tensors are passed by reference (a separate engine process would need them serialized).
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            log.warning("VLLM_ENABLE_V1_MULTIPROCESSING=0 is forced: GRPO pushes weights into an in-process engine")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kw = self._engine_kwargs()
        log.info("starting vLLM for GRPO rollouts from %s (%s)", self.folder, kw)
        self.llm = self._vllm.LLM(model=str(self.folder), **kw)

    def close(self) -> None:
        """Shut the engine down, free its GPU memory and delete the start folder. Idempotent."""
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception as exc:  # a failed shutdown must not hide the training result
                    log.warning("vLLM shutdown failed: %s", exc)
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if self._cleanup is not None:
            self._cleanup()

    # ------------------------------------------------------------------ weights
    def _apply_model(self, fn: Callable[[nn.Module], Any]) -> list[Any]:
        """Run ``fn(engine model)`` in every engine worker (one here: no tensor parallelism)."""
        if hasattr(self.llm, "apply_model"):
            return list(self.llm.apply_model(fn))
        # Older vLLM without LLM.apply_model: the in-process worker's model.
        return [fn(self.llm.llm_engine.model_executor.driver_worker.model_runner.model)]

    def sync(self, model: nn.Module) -> None:
        """Push the policy's current weights (merged, gathered) into the engine. Collective under FSDP2.

        Call it after every optimizer step that changed the weights, before the next :meth:`sample`.
        """
        if self.llm is None:
            raise RuntimeError("VLLMRollouts.sync() before start()")
        weights = policy_weights(model)

        def load(engine_model: nn.Module) -> list[str]:
            loaded = engine_model.load_weights(weights)
            if not isinstance(loaded, set | frozenset):  # older models return nothing: no check possible
                return []
            return sorted(n for n, _ in engine_model.named_parameters() if n not in loaded)

        missing = sorted({n for per_worker in self._apply_model(load) for n in (per_worker or [])})
        if missing and missing != self.missing:
            log.warning("vLLM weight push did not cover %d engine parameters (they keep older values): %s",
                        len(missing), missing[:8])
        self.missing = missing
        # Cached prefix KV blocks (the image and prompt of a repeated record) were computed with the old weights.
        self.llm.reset_prefix_cache()
        self.syncs += 1

    # ------------------------------------------------------------------ sampling
    def sample(self, prompts: Sequence[str], images: Sequence[Any], n: int, *, temperature: float, top_p: float,
               max_tokens: int, seed: int, top_k: int = 0, repetition_penalty: float = 1.0) -> tuple[Tensor, Tensor]:
        """``n`` completions of each (prompt text, image): ``(tokens (B*n, Tc), logps (B*n, Tc))`` on CPU.

        ``prompts`` are full chat-template strings (the image placeholder included, as the HF collator builds
        them); rows are group-contiguous. Prompt ``i`` uses seed ``seed + i*n`` and vLLM gives its j-th sample
        ``seed + i*n + j``: every sample of a batch has its own seed. ``logps`` are vLLM's log-probs of the
        sampled tokens (0 on padding, NaN where unknown). Every sampling knob is passed explicitly (``top_k`` 0:
        off, sent as -1, which every vLLM version reads as off), so the model folder's generation config is never
        what is sampled.
        """
        if self.llm is None:
            raise RuntimeError("VLLMRollouts.sample() before start()")
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        params = [self._vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p,
                                            top_k=top_k if top_k > 0 else -1, repetition_penalty=repetition_penalty,
                                            max_tokens=max_tokens, seed=seed + i * n, stop_token_ids=self.eos_ids,
                                            logprobs=0)
                  for i in range(len(prompts))]
        requests = [{"prompt": p, "multi_modal_data": {"image": img}} for p, img in zip(prompts, images, strict=True)]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        seqs: list[list[int]] = []
        lps: list[list[float]] = []
        for i, out in enumerate(outputs):
            samples = sorted(out.outputs, key=lambda o: o.index)
            if len(samples) != n:
                raise RuntimeError(f"vLLM returned {len(samples)} samples for prompt {i}, expected {n}")
            for o in samples:
                ids, lp = completion_tokens(o, self.eos_ids)
                seqs.append(ids)
                lps.append(lp)
        tokens, logps = pack_completions(seqs, self.eos_ids, self.pad_id, lps)
        assert logps is not None
        return tokens, logps
