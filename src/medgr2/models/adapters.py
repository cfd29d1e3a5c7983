"""The one place that knows how a peft (LoRA) wrapper sits around a Hugging Face model: reach the model
inside it, or get a plain copy with the adapters merged for ``save_pretrained``."""

from __future__ import annotations

import copy

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merged(model: nn.Module) -> nn.Module:
    """A model to export: a copy with LoRA merged into the weights (the model itself when it has none).

    A copy, because ``merge_and_unload`` changes the module it is called on and training may go on."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


__all__ = ["merged", "unwrap"]
