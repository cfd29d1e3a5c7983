"""`make gpu-check DRY=1`: the one-shot GPU check script runs on CPU with the tiny model and writes its report."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import common, gpu_check


def test_the_gpu_check_dry_run_measures_sft_and_grpo_and_writes_json_and_markdown(tmp_path, shared_cache,
                                                                                  monkeypatch):
    monkeypatch.setenv(common.CACHE_ENV, str(shared_cache))
    res = gpu_check.main(["--dry", "--no-pytest", "--out", str(tmp_path)])
    checks = res["checks"]
    for name in ("sft", "sft + LoRA"):
        assert checks[name]["status"] == "ok", checks[name]
        assert checks[name]["tokens_per_s"] > 0 and checks[name]["loss"] > 0
    assert checks["sft + LoRA"]["lora"] is True
    assert checks["grpo expand"]["status"] == "ok", checks["grpo expand"]
    assert checks["grpo expand"]["G"] == 8 and checks["grpo expand"]["step_s"] > 0
    # What cannot run here says why instead of failing.
    assert checks["grpo vllm"]["status"] == "skipped" and "vLLM" in checks["grpo vllm"]["reason"]
    assert checks["fsdp2 cli"]["status"] == "skipped" and "GPU" in checks["fsdp2 cli"]["reason"]
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["mode"].startswith("dry run") and set(saved["checks"]) == set(checks)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| grpo expand | ok |" in table and "| grpo vllm | skipped |" in table


def test_without_the_real_config_the_full_size_checks_are_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "REAL_3B", tmp_path / "absent")
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    res = gpu_check.main(["--no-pytest", "--out", str(tmp_path)])
    for name in ("sft", "sft + LoRA", "grpo expand", "grpo vllm"):
        assert res["checks"][name]["status"] == "skipped"
        assert "real config absent" in res["checks"][name]["reason"]


def test_the_full_size_sft_measurement_runs_on_the_real_config_shrunk(monkeypatch):
    """The non-dry path reads the real config (transformers 4.41's flat layout); here it is shrunk to run on CPU."""
    from real_layout import REAL_ROOT  # the test suite's copy of the real files (skipped where absent)

    monkeypatch.setattr(gpu_check, "REAL_3B", REAL_ROOT / "Qwen2.5-VL-3B-Instruct")
    if not (gpu_check.REAL_3B / "config.json").exists():
        pytest.skip(f"the real Qwen2.5-VL-3B config is not at {gpu_check.REAL_3B} (set MEDGR2_REAL_QWEN_DIR)")
    config = gpu_check.full_size_config()
    assert config.text_config.num_hidden_layers == 36 and config.vision_config.depth == 32  # really the 3B
    text, vision = config.text_config, config.vision_config
    # head_dim stays 128: the real M-RoPE sections [16, 24, 24] need it
    for k, v in {"num_hidden_layers": 1, "hidden_size": 128, "intermediate_size": 128, "num_attention_heads": 1,
                 "num_key_value_heads": 1, "head_dim": 128}.items():
        setattr(text, k, v)
    text.layer_types = ["full_attention"]
    for k, v in {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
                 "out_hidden_size": 128}.items():
        setattr(vision, k, v)
    res = gpu_check.sft_throughput(config, torch.device("cpu"), False, 1, 48, 8, 1)
    assert res["status"] == "ok" and res["tokens_per_s"] > 0 and res["loss"] > 0
