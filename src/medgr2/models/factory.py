"""The one model factory: a config in, ``(model, processor)`` out — tiny or real, plain, LoRA or quantized.

Every stage gets its VLM from :func:`load_vlm`. The tiny embedded model is built once into a cache folder
(keyed by a hash of its spec and tokenizer corpus) and then loaded through exactly the same
``from_pretrained`` / ``AutoProcessor`` path that a hub id or a local checkpoint of
``Qwen/Qwen2.5-VL-3B-Instruct`` takes; the processor comes from :mod:`medgr2.models.processor`.

The factory knows no data set: building the tiny model needs the text its tokenizer is trained on, which the
caller passes as ``corpus_fn`` (the project's is :func:`medgr2.data.synthmed.tokenizer_corpus`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from medgr2.models.processor import load_processor
from medgr2.models.tiny import TinyVLMSpec, build_tiny_vlm
from medgr2.utils.io import atomic_dir

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "auto": "auto"}


@dataclass
class LoraSpec:
    """peft LoRA options (``model.lora.*``)."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelSpec:
    """What ``conf/model/*.yaml`` describes.

    ``path`` is a hub id or a local folder; ``None`` with ``tiny`` set means the embedded tiny model.
    Extra keys (``pretrain``, ...) are ignored here.
    ``quantization``: ``none`` | ``8bit`` | ``4bit`` (bitsandbytes). 4-bit + generation is GPU-only.
    """

    name: str = "tiny_vlm"
    path: str | None = None
    dtype: str = "float32"
    attn_implementation: str | None = "sdpa"
    quantization: str = "none"
    lora: LoraSpec = field(default_factory=LoraSpec)
    tiny: TinyVLMSpec | None = None
    cache_dir: str = ".cache/medgr2"
    # Image resolution (models/processor.py): image_size pins a square side (resized first, multiple of 28,
    # exactly (side/28)^2 tokens per image); otherwise Qwen's min_pixels / max_pixels bound each image
    # (None: the checkpoint's preprocessor_config.json).
    image_size: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    trust_remote_code: bool = False

    @staticmethod
    def from_config(cfg: Any) -> ModelSpec:
        """Build from a Hydra/OmegaConf node or a plain dict."""
        from omegaconf import DictConfig, OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        d = {k: v for k, v in d.items() if k in ModelSpec.__dataclass_fields__}
        lora = LoraSpec(**(d.pop("lora", None) or {}))
        tiny = d.pop("tiny", None)
        return ModelSpec(**d, lora=lora, tiny=TinyVLMSpec(**tiny) if tiny is not None else None)


def _tiny_key(spec: TinyVLMSpec, corpus: list[str]) -> str:
    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    for text in corpus:
        h.update(text.encode())
    return h.hexdigest()[:12]


def resolve_model_path(spec: ModelSpec, corpus_fn: Callable[[], Iterable[str]] | None = None) -> str:
    """The ``from_pretrained`` path for a spec, building the tiny model into the cache if needed.

    ``corpus_fn`` returns the tiny tokenizer's training text; it is needed (and read) only for a tiny spec.
    """
    if spec.path:
        return spec.path
    if spec.tiny is None:
        raise ValueError(f"model {spec.name!r}: set model.path (hub id or folder) or model.tiny")
    if corpus_fn is None:
        raise ValueError(f"model {spec.name!r} is the embedded tiny model: pass its tokenizer corpus "
                         "(corpus_fn=medgr2.data.synthmed.tokenizer_corpus)")
    corpus = list(corpus_fn())
    path = Path(spec.cache_dir) / "models" / f"tiny_vlm-{_tiny_key(spec.tiny, corpus)}"
    if not (path / "config.json").exists():
        log.info("building the tiny Qwen2.5-VL into %s", path)
        with atomic_dir(path) as tmp:
            build_tiny_vlm(spec.tiny, corpus, tmp)
    return str(path)


def _quantization_config(kind: str):
    if kind in (None, "none"):
        return None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "4bit":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "model.quantization=4bit needs a CUDA GPU: on CPU, bitsandbytes 4-bit weights break the "
                "grad-enabled forward that follows generate() (docs/field-facts.md). Use quantization=8bit or none."
            )
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    raise ValueError(f"model.quantization must be none, 8bit or 4bit, not {kind!r}")


def apply_lora(model, lora: LoraSpec):
    """Wrap a model with peft LoRA adapters on the language model's attention projections."""
    from peft import LoraConfig, get_peft_model

    # Only the text decoder: the vision tower's projections are named "qkv"/"proj" and stay frozen.
    targets = rf".*language_model.*\.({'|'.join(lora.target_modules)})$"
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                     bias="none")
    return get_peft_model(model, cfg)


def load_vlm(spec: ModelSpec | Any, weights: str | None = None,
             corpus_fn: Callable[[], Iterable[str]] | None = None, lora: bool | None = None):
    """Return ``(model, processor)`` for a model spec.

    ``weights`` overrides where the weights come from (a folder written by ``save_pretrained`` with its
    processor, e.g. the cached pretrained base or an SFT export); the spec's pixel settings still apply.
    ``corpus_fn``: the tiny tokenizer's corpus (:func:`resolve_model_path`), needed only to build a tiny model,
    i.e. for a tiny spec without ``weights``. ``lora`` overrides ``spec.lora.enabled``.
    """
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_config(spec)
    # With weights the spec's own checkpoint is never read (model and processor come from the weights folder).
    base_path = weights or resolve_model_path(spec, corpus_fn)
    processor = load_processor(base_path, spec.image_size, spec.min_pixels, spec.max_pixels,
                               spec.trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": DTYPES[spec.dtype]}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    qcfg = _quantization_config(spec.quantization)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_path, **kwargs)
    use_lora = spec.lora.enabled if lora is None else lora
    if qcfg is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if use_lora:
        model = apply_lora(model, spec.lora)
    return model, processor


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
