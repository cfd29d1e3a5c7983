"""Build real-layout Qwen2.5-VL checkpoint folders at test time (random, narrow weights; no download).

The non-weight files of the real ``Qwen/Qwen2.5-VL-3B-Instruct`` / ``-7B-Instruct`` repos (config, tokenizer,
chat template, preprocessor and generation config) are read from the ``shared/real-qwen25vl`` folder beside
the repository root; tests that need them skip, saying why, where that folder is absent. Nothing from it is
copied into the repository: folders are built under pytest's temporary directory.

What is kept: every field of the real ``config.json`` (in the flat layout transformers 4.41 wrote), the real
vocabulary size (151,936 tied for 3B; 152,064 untied for 7B), head_dim 128 (so the real M-RoPE sections
[16, 24, 24] stay valid), the vision patch / merge / window settings, the real tokenizer and chat template, and
the real weight key names (``model.layers.N...``, ``visual.blocks.N...``). What is reduced: widths and depths.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

# A folder with the real checkpoints' files minus weights (config, tokenizer, chat template, preprocessor):
# MEDGR2_REAL_QWEN_DIR, else ``real-qwen25vl/`` in the folder that holds the repository.
REAL_ROOT = Path(os.environ.get("MEDGR2_REAL_QWEN_DIR")
                 or Path(__file__).resolve().parents[2] / "shared" / "real-qwen25vl")
SKIP_REASON = (f"real Qwen2.5-VL checkpoint files not found at {REAL_ROOT} (config, tokenizer, chat template, "
               "preprocessor and generation config of Qwen/Qwen2.5-VL-3B/7B-Instruct); real-layout tests skipped")
# Non-weight files both repos share (the 3B folder holds only its own config and generation config).
SHARED_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json",
                "preprocessor_config.json", "generation_config.json")


def available() -> bool:
    """True where the real checkpoint files can be read."""
    return (REAL_ROOT / "Qwen2.5-VL-7B-Instruct" / "vocab.json").exists() and (
        REAL_ROOT / "Qwen2.5-VL-3B-Instruct" / "config.json").exists()


def narrow_config(real: dict, layers: int = 2, heads: int = 2, kv_heads: int = 1) -> dict:
    """The real config dict with widths/depths reduced; head_dim stays 128 and every field is kept."""
    cfg = json.loads(json.dumps(real))
    head_dim = real["hidden_size"] // real["num_attention_heads"]
    assert head_dim == 128, head_dim
    cfg.update(hidden_size=heads * head_dim, num_attention_heads=heads, num_key_value_heads=kv_heads,
               intermediate_size=2 * heads * head_dim, num_hidden_layers=layers, max_window_layers=layers)
    v = cfg["vision_config"]
    v_head = v["hidden_size"] // v["num_heads"]  # 80: the vision rotary embedding follows it
    v.update(depth=2, hidden_size=2 * v_head, num_heads=2, intermediate_size=4 * v_head,
             out_hidden_size=cfg["hidden_size"], fullatt_block_indexes=[1])
    return cfg


def _real_key(name: str) -> str:
    """transformers 5 module names -> the key names in the real checkpoint's safetensors index."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return "visual." + name[len("model.visual."):]
    return name


def build(out_dir: Path, size: str = "3b", seed: int = 0) -> Path:
    """Write a real-layout checkpoint folder for ``size`` ("3b": tied head, "7b": untied) to ``out_dir``."""
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    src_cfg = REAL_ROOT / ("Qwen2.5-VL-3B-Instruct" if size == "3b" else "Qwen2.5-VL-7B-Instruct")
    shared = REAL_ROOT / "Qwen2.5-VL-7B-Instruct"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SHARED_FILES:
        shutil.copyfile(shared / name, out_dir / name)
    shutil.copyfile(src_cfg / "generation_config.json", out_dir / "generation_config.json")
    cfg = narrow_config(json.loads((src_cfg / "config.json").read_text()))
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    config = Qwen2_5_VLConfig.from_pretrained(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    state = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the real tied checkpoint stores only the embedding
        state[_real_key(k)] = v.detach().to(torch.bfloat16).contiguous()  # the real torch_dtype
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir
