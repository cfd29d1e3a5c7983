"""FSDP2 sharding of the VLM modules (``trainer=fsdp`` on GPUs, ``trainer=fsdp2_cpu`` on 2 CPU processes).

Lightning 2.6 refuses ``strategy="fsdp"`` (FSDP1) on CPU, so every sharded run goes through Lightning's
``ModelParallelStrategy`` with FSDP2's ``fully_shard`` applied in ``LightningModule.configure_model``
(:meth:`medgr2.modules.sft.VLMModule.configure_model` calls :func:`shard_module`): one code path for the 2-process
CPU test and an 8-GPU run. :class:`FSDP2Strategy` is that strategy plus the sharding options the modules read.

What gets sharded (:func:`shard_vlm`), children first, as FSDP2 wants:

1. every block whose class is in the model's ``_no_split_modules`` (Qwen2.5-VL: the decoder layers and the
   vision blocks), with optional activation checkpointing (transformers' non-reentrant gradient checkpointing);
2. the vision tower (``model.visual``: patch embedding + merger) when it shares no parameter with the rest;
3. the root (the HF model or its peft wrapper): token embeddings, LM head (tied to the embeddings in the tiny
   model and Qwen2.5-VL-3B: both must live in one FSDP unit), final norm.

The text decoder is deliberately *not* a unit of its own: with tied embeddings that would split the tied weight.

Calls that bypass the root's ``forward`` (R_φ reads the decoder's hidden states through ``model.model``; GRPO
embeds tokens and images itself before its log-prob forward) run through :func:`root_call`, which runs them
inside the root's FSDP pre/post-forward hooks, so the root's parameters are gathered and its gradients
reduce-scattered. GRPO rollouts run under :func:`gathered`: the first forward gathers every unit and nothing
is resharded until the rollout ends (one all-gather per unit per rollout batch instead of one per token).

Mixed precision is FSDP2's ``MixedPrecisionPolicy`` (parameters kept in their load dtype and sharded, compute
in ``mixed_precision``, gradients reduced in ``reduce_dtype``); on CPU runs leave it off (fp32).

After ``fit`` every rank gathers the full weights into a plain (unsharded) model (:func:`gather_full_model`,
called from ``on_fit_end``), so ``export()`` writes an ordinary ``save_pretrained`` folder and the post-training
evaluation runs on rank 0 alone, exactly as after single-process training. Checkpoints are full (gathered) state
dicts by default (``save_distributed_checkpoint=False``): a single ``.ckpt`` file that a sharded run resumes
from and that a plain single-process module loads with ``load_state_dict``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from medgr2.models.adapters import unwrap

log = logging.getLogger(__name__)

_DTYPES = {None: None, "none": None, "null": None, "fp32": None, "float32": None, "32": None,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_ROOT_CALL = "_medgr2_root_call"


@dataclass
class ShardingOptions:
    """How :func:`shard_vlm` shards (``trainer.strategy.*`` in ``conf/trainer/fsdp*.yaml``).

    mixed_precision: compute dtype (``bf16``/``fp16``; null: the parameters' own dtype, fp32 on CPU).
    reduce_dtype: dtype of the gradient reduce-scatter (``float32`` keeps bf16 runs' gradients exact-ish).
    reshard_after_forward: free gathered parameters after each unit's forward (ZeRO-3); false keeps them
        until backward (ZeRO-2-like: more memory, fewer all-gathers).
    activation_checkpointing: recompute each decoder/vision block in backward (transformers' non-reentrant
        checkpointing; puts the model in train mode, which transformers requires for it).
    """

    mixed_precision: str | None = None
    reduce_dtype: str | None = "float32"
    reshard_after_forward: bool = True
    activation_checkpointing: bool = False

    def __post_init__(self):
        for key in ("mixed_precision", "reduce_dtype"):
            value = getattr(self, key)
            if (str(value).lower() if value is not None else None) not in _DTYPES:
                raise ValueError(f"sharding {key} must be one of bf16, fp16, float32 or null, got {value!r}")

    def mp_policy(self):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        param = _DTYPES[str(self.mixed_precision).lower() if self.mixed_precision is not None else None]
        reduce = _DTYPES[str(self.reduce_dtype).lower() if self.reduce_dtype is not None else None]
        if param is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=reduce or torch.float32)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` for pure FSDP2 data parallelism, carrying :class:`ShardingOptions`.

    ``data_parallel_size="auto"`` means every process (Lightning's own ``auto`` means the number of nodes, which
    suits 2-D parallelism, not FSDP alone). Tensor parallelism is not implemented by the medgr2 modules:
    ``tensor_parallel_size`` must be 1. ``save_distributed_checkpoint`` defaults to False: full, portable
    checkpoints (a single file gathered on rank 0).
    """

    def __init__(self, data_parallel_size: int | str = "auto", tensor_parallel_size: int = 1,
                 save_distributed_checkpoint: bool = False, mixed_precision: str | None = None,
                 reduce_dtype: str | None = "float32", reshard_after_forward: bool = True,
                 activation_checkpointing: bool = False, **kwargs: Any):
        if int(tensor_parallel_size) != 1:
            raise ValueError("medgr2 shards with FSDP2 only: tensor_parallel_size must be 1 "
                             f"(got {tensor_parallel_size}); use data_parallel_size for the number of shards")
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.sharding = ShardingOptions(mixed_precision=mixed_precision, reduce_dtype=reduce_dtype,
                                        reshard_after_forward=bool(reshard_after_forward),
                                        activation_checkpointing=bool(activation_checkpointing))

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


# ============================================================================================ sharding


def is_sharded(module: nn.Module | None) -> bool:
    """True when ``module`` is an FSDP2 unit (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _hf(model: nn.Module) -> nn.Module:
    return unwrap(model)


def _shares_params_outside(sub: nn.Module, root: nn.Module) -> bool:
    inside = {id(p) for p in sub.parameters()}
    sub_modules = {id(m) for m in sub.modules()}
    for m in root.modules():
        if id(m) in sub_modules:
            continue
        if any(id(p) in inside for p in m.parameters(recurse=False)):
            return True
    return False


def _root_call_method(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def shard_vlm(model: nn.Module, mesh, options: ShardingOptions | None = None) -> nn.Module:
    """``fully_shard`` a (peft-wrapped) HF VLM in place: blocks, vision tower, root. Returns ``model``."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    opts = options or ShardingOptions()
    if is_sharded(model):
        return model
    hf = _hf(model)
    if getattr(hf, "is_loaded_in_8bit", False) or getattr(hf, "is_loaded_in_4bit", False):
        raise ValueError("FSDP sharding of a bitsandbytes-quantized model is not supported: use "
                         "model.quantization=none with trainer=fsdp (or a single GPU for QLoRA)")
    block_classes = set(getattr(hf, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_classes]
    if not blocks:
        raise ValueError(f"{type(hf).__name__} declares no _no_split_modules blocks to shard")
    if opts.activation_checkpointing:
        if not getattr(hf, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(hf).__name__} does not support activation checkpointing")
        enable = getattr(hf, "activation_checkpointing_enable", None)  # transformers >= 5 name
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # transformers checkpoints only modules in train mode; from_pretrained returns eval mode and Lightning keeps
        # module modes, so without this the option would silently do nothing (Qwen2.5-VL has no dropout to switch).
        model.train()
    kw = dict(mesh=mesh, mp_policy=opts.mp_policy(), reshard_after_forward=opts.reshard_after_forward)
    for block in blocks:
        fully_shard(block, **kw)
    visual = getattr(getattr(hf, "model", None), "visual", None)
    if isinstance(visual, nn.Module) and not _shares_params_outside(visual, model):
        fully_shard(visual, **kw)
    fully_shard(model, **kw)
    # root_call(): run code that calls submodules directly inside the root's pre/post-forward hooks.
    object.__setattr__(model, _ROOT_CALL, types.MethodType(_root_call_method, model))
    register_fsdp_forward_method(model, _ROOT_CALL)
    if hasattr(model, "generate"):  # HF generate encodes the image before its first forward: one root "forward"
        register_fsdp_forward_method(model, "generate")
    model._medgr2_sharding = asdict(opts)
    return model


def shard_plain(module: nn.Module, mesh, options: ShardingOptions | None = None) -> nn.Module:
    """``fully_shard`` a small module as one unit (R_φ's regression head)."""
    from torch.distributed.fsdp import fully_shard

    opts = options or ShardingOptions()
    if not is_sharded(module):
        fully_shard(module, mesh=mesh, mp_policy=opts.mp_policy(), reshard_after_forward=opts.reshard_after_forward)
    return module


def sharding_options(lightning_module: L.LightningModule) -> ShardingOptions | None:
    """The options of the trainer's strategy when it is a ``ModelParallelStrategy`` (else None: no sharding)."""
    trainer = lightning_module._trainer
    if trainer is None or not isinstance(trainer.strategy, ModelParallelStrategy):
        return None
    opts = getattr(trainer.strategy, "sharding", None)
    return opts if isinstance(opts, ShardingOptions) else ShardingOptions()


def data_parallel_mesh(lightning_module: L.LightningModule):
    mesh = lightning_module.device_mesh
    if mesh is None:
        raise RuntimeError("ModelParallelStrategy did not set a device mesh before configure_model")
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() != 1:
        raise ValueError("medgr2 shards with FSDP2 only: use tensor_parallel_size=1")
    return mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh


def root_call(root: nn.Module, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` as a forward of the FSDP root ``root`` (plainly when ``root`` is not sharded).

    For code that calls a sharded model's submodules directly instead of its ``forward``: FSDP2 only gathers a
    unit's parameters (and reduce-scatters their gradients) around its registered forward methods. Inside
    ``fn`` call the root itself through ``root.forward(...)``, not ``root(...)`` (no nested root hooks).
    """
    if is_sharded(root) and hasattr(root, _ROOT_CALL):
        return getattr(root, _ROOT_CALL)(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def forward_fn(model: nn.Module) -> Callable:
    """What to call for the model's forward inside :func:`root_call`: ``model.forward`` when sharded."""
    return model.forward if is_sharded(model) else model


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Keep every unit's parameters gathered from its first forward until the block ends (for rollouts).

    No-grad use only. Without it a sharded model still generates correctly, but gathers each unit again for
    every decoded token. On exit all units are resharded and their ``reshard_after_forward`` restored.
    """
    if not is_sharded(model):
        yield model
        return
    units = fsdp_units(model)
    configured = bool(getattr(model, "_medgr2_sharding", {}).get("reshard_after_forward", True))
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            # FSDP2 never reshards the root after forward (backward needs it at once); the rest as configured.
            unit.set_reshard_after_forward(configured and unit is not model, recurse=False)


# ============================================================================================ gathering


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on every rank, on CPU. Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    return {k: v.detach().cpu() for k, v in state.items()}


def gather_full_model(model: nn.Module, rebuild: Callable[[], nn.Module], device: torch.device | str) -> nn.Module:
    """A plain copy of a sharded model, with the trained weights, on ``device``. Collective.

    ``rebuild`` returns a fresh unsharded model of the same structure (the model factory's ``load_vlm``).
    """
    state = full_state_dict(model)
    plain = rebuild()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embed_tokens) appear under both names or one: either way they are loaded.
    tied = set(getattr(_hf(plain), "_tied_weights_keys", None) or {})
    missing = [k for k in missing if not any(k.endswith(t) for t in tied)]
    if missing or unexpected:
        raise RuntimeError(f"gathered state dict does not fit the rebuilt model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return plain.to(device)


# ============================================================================================ audit


def _local(p: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return p.to_local() if isinstance(p, DTensor) else p


def _full(p: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 (16 hex digits) of a tensor's bytes: exact equality of weights across ranks and files."""
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()[:16]


def shard_stats(module: nn.Module) -> dict[str, Any]:
    """Full vs this rank's parameter element counts and how many parameters are DTensor shards."""
    from torch.distributed.tensor import DTensor

    params = list(module.parameters())
    return {"full_numel": int(sum(p.numel() for p in params)),
            "local_numel": int(sum(_local(p).numel() for p in params)),
            "n_params": len(params), "n_dtensor": int(sum(isinstance(p, DTensor) for p in params))}


def full_digests(module: nn.Module) -> dict[str, str]:
    """``{name: digest}`` of every parameter's full value. Collective when ``module`` is sharded."""
    with torch.no_grad():
        return {n: tensor_digest(_full(p.detach())) for n, p in module.named_parameters()}


class ShardingAudit(L.Callback):
    """Writes ``<out_dir>/rank<r>.json`` per rank: shard sizes at the start of training (the VLM, ``model``, and
    the whole LightningModule, ``module``), the digests of every full (gathered) parameter of the LightningModule
    at the start and end of training, the loss values logged each step, the steps run.

    For tests and for checking a new cluster set-up: add it with
    ``+callbacks.shard_audit._target_=medgr2.training.sharding.ShardingAudit +callbacks.shard_audit.out_dir=DIR``.
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        self.record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                       "strategy": type(trainer.strategy).__name__, "start_step": trainer.global_step,
                       "model": shard_stats(model), "module": shard_stats(pl_module),
                       "start_digests": full_digests(pl_module), "losses": []}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        losses = {k: float(v) for k, v in trainer.callback_metrics.items() if "loss" in k and v.numel() == 1}
        self.record["losses"].append({"step": trainer.global_step, **losses})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record.update(end_step=trainer.global_step, end_digests=full_digests(pl_module))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record, indent=1))
