"""One-shot GPU check: ``pytest -m gpu`` plus step throughput of the full-size Qwen2.5-VL-3B architecture.

``make gpu-check`` (``python -m benchmarks.gpu_check``) on a CUDA machine, in one run of at most ~8 minutes on one
H100/H200, with nothing downloaded:

1. ``pytest -m gpu tests/test_gpu.py`` (bf16 SFT and GRPO, QLoRA, vLLM generation and rollouts), with a timeout;
2. the **full-size** Qwen2.5-VL-3B architecture built from the real ``config.json`` (found beside the repository in
   ``$MEDGR2_REAL_QWEN_DIR/Qwen2.5-VL-3B-Instruct/``) with random bf16 weights:
   SFT step throughput (tokens/s, MFU, peak memory) with and without LoRA;
3. GRPO step time with ``expand`` vs ``vllm`` rollouts (G = 8, 256 new tokens) on the same architecture (needs the
   tokenizer files of ``$MEDGR2_REAL_QWEN_DIR/Qwen2.5-VL-7B-Instruct/``: the 3B and 7B share the tokenizer);
4. FSDP2 through the CLI (``trainer=fsdp``) on every GPU present (skipped with one).

It writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (default ``$OUT`` when set, else
``benchmarks/results/gpu/``). Whatever is missing (no real config, no vLLM, one GPU) is skipped *and says why* in
both files. ``--dry`` (``make gpu-check DRY=1``) runs the same code on CPU with the tiny model and small sizes in
under a minute; CI runs it as a test (``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
# The real checkpoints' files without weights (config, tokenizer, chat template), e.g. hub snapshots of
# Qwen2.5-VL-3B/7B-Instruct minus *.safetensors: nothing is downloaded; unset, the full-size checks are skipped.
REAL = Path(os.environ.get("MEDGR2_REAL_QWEN_DIR") or "MEDGR2_REAL_QWEN_DIR-is-unset")
REAL_3B = REAL / "Qwen2.5-VL-3B-Instruct"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "preprocessor_config.json",
                   "chat_template.json")
# Dense bf16 tensor-core peak (no sparsity), from the vendors' data sheets.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section(results: dict[str, Any], name: str, fn, *args) -> None:
    """Run one check; its result, its time, or the error that stopped it (the other checks still run)."""
    t0 = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as err:  # one failed check must not hide the others
        results[name] = {"status": "error", "error": f"{type(err).__name__}: {err}",
                         "trace": traceback.format_exc()[-2000:]}
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[gpu-check] {name}: {results[name].get('status', 'ok')} ({results[name]['seconds']} s)", flush=True)


# ------------------------------------------------------------------------------------------------ 1. pytest


def run_pytest(timeout: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        xml = Path(d) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", f"--junitxml={xml}"]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": f"pytest -m gpu did not finish in {timeout} s"}
        counts: dict[str, Any] = {"rc": proc.returncode, "tail": proc.stdout[-1500:]}
        if xml.exists():
            import xml.etree.ElementTree as ET

            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite[0]
            counts.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        counts["status"] = "ok" if proc.returncode in (0, 5) else "failed"
        return counts


# ------------------------------------------------------------------------------------------------ models


def full_size_config() -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(REAL_3B))


def tiny_config() -> Any:
    from transformers import AutoConfig

    from benchmarks import common

    return AutoConfig.from_pretrained(common.tiny_model_path())


def random_model(config: Any, device: torch.device, dtype: torch.dtype):
    """Qwen2.5-VL from a config with random weights, directly on ``device`` (no download, no checkpoint)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model.train()


def synthetic_batch(config: Any, batch: int, seq: int, grid: int, device: torch.device) -> dict[str, torch.Tensor]:
    """B sequences of ``seq`` tokens, each holding one image of ``grid`` x ``grid`` patches (random pixels)."""
    vc = config.vision_config
    merge, patch, temporal = vc.spatial_merge_size, vc.patch_size, vc.temporal_patch_size
    n_img = grid * grid // (merge * merge)  # image tokens after the merger
    text = config.text_config if hasattr(config, "text_config") else config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, min(text.vocab_size, 150_000), (batch, seq), generator=g)  # (B, T)
    special = torch.tensor([config.image_token_id, config.video_token_id, config.vision_start_token_id,
                            config.vision_end_token_id])
    ids[torch.isin(ids, special)] = 11
    ids[:, 1] = config.vision_start_token_id
    ids[:, 2:2 + n_img] = config.image_token_id
    ids[:, 2 + n_img] = config.vision_end_token_id
    labels = ids.clone()
    labels[:, : 3 + n_img] = -100  # loss on the text only, as SFT
    pixels = torch.randn(batch * grid * grid, 3 * temporal * patch * patch, generator=g)  # (B*patches, C*t*p*p)
    thw = torch.tensor([[1, grid, grid]] * batch)  # (B, 3)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device), "pixel_values": pixels.to(device), "image_grid_thw": thw.to(device)}


# ------------------------------------------------------------------------------------------------ 2. SFT


def sft_throughput(config: Any, device: torch.device, lora: bool, batch: int, seq: int, grid: int,
                   steps: int) -> dict[str, Any]:
    """Tokens/s, MFU (6 * params * tokens/s over the bf16 peak) and peak memory of SFT steps (AdamW)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_model(config, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = synthetic_batch(config, batch, seq, grid, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + 2):  # 2 warm-up steps (allocator, kernels)
        sync(device)
        t0 = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]  # median
    tok_s = batch * seq / step
    peak = peak_flops(device)
    out = {"status": "ok", "lora": lora, "dtype": str(dtype).replace("torch.", ""), "params": n_params,
           "batch": batch, "seq": seq, "step_s": round(step, 4), "tokens_per_s": round(tok_s, 1),
           "mfu": round(6 * n_params * tok_s / peak, 4) if peak else None,
           "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
           "loss": float(loss)}
    del model, opt, inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------ 3. GRPO


def full_size_folder(config: Any, folder: Path, device: torch.device) -> Path:
    """A checkpoint folder of the full-size architecture: random bf16 weights + the shared tokenizer files."""
    missing = [f for f in TOKENIZER_FILES if not (REAL / "Qwen2.5-VL-7B-Instruct" / f).exists()]
    if missing:
        raise FileNotFoundError(f"tokenizer files {missing} not in {REAL / 'Qwen2.5-VL-7B-Instruct'}")
    model = random_model(config, device, torch.bfloat16)
    model.save_pretrained(folder)
    del model
    for f in TOKENIZER_FILES:
        shutil.copy(REAL / "Qwen2.5-VL-7B-Instruct" / f, folder / f)
    shutil.copy(REAL_3B / "generation_config.json", folder / "generation_config.json")
    return folder


def grpo_step_time(spec: dict[str, Any], device: torch.device, rollout: str, G: int, new_tokens: int,
                   prompts: int, steps: int) -> dict[str, Any]:
    """Median wall time of one GRPO step (rollouts + rewards + loss + AdamW) through :class:`GRPOPolicy`."""
    import importlib.util

    if rollout == "vllm" and (device.type != "cuda" or importlib.util.find_spec("vllm") is None):
        return {"status": "skipped", "reason": "vLLM needs a CUDA GPU and `pip install vllm`"}
    from benchmarks import common
    from medgr2.modules.grpo import GRPOPolicy

    module = GRPOPolicy(spec, rollout=rollout, num_generations=G, max_new_tokens=new_tokens, lr=1e-6,
                        vllm={"gpu_memory_utilization": 0.3, "enforce_eager": True, "dtype": "bfloat16",
                              "max_model_len": 4096}).to(device)
    module.rm_fn = common.length_reward
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-6)
    recs = common.records(prompts * (steps + 1))
    times, rows = [], []
    try:
        for i in range(steps + 1):  # step 0 warms up (and starts the vLLM engine)
            sync(device)
            t0 = time.perf_counter()
            ro, stats = module.make_rollouts(recs[i * prompts:(i + 1) * prompts])
            loss, loss_stats = module.policy_loss(ro)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            module._engine_stale = module.vllm_rollouts is not None
            sync(device)
            if i:
                times.append(time.perf_counter() - t0)
                rows.append({k: float(v) for k, v in {**stats, **loss_stats}.items()
                             if k in ("time/generate", "completion_len", "vllm_logp_gap", "is_ratio_mean")})
    finally:
        if module.vllm_rollouts is not None:
            module.vllm_rollouts.close()
    step = sorted(times)[len(times) // 2]
    out = {"status": "ok", "rollout": rollout, "G": G, "new_tokens": new_tokens, "prompts": prompts,
           "step_s": round(step, 3),
           "generate_s": round(sorted(r["time/generate"] for r in rows)[len(rows) // 2], 3),
           "completion_len": round(sum(r["completion_len"] for r in rows) / len(rows), 1)}
    for k in ("vllm_logp_gap", "is_ratio_mean"):
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = round(sum(vals) / len(vals), 4)
    del module, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------ 4. FSDP2


def fsdp_cli(n_gpus: int, timeout: int) -> dict[str, Any]:
    if n_gpus < 2:
        return {"status": "skipped", "reason": f"{n_gpus} GPU(s): FSDP2 needs 2+ (CPU sharding: tests/test_fsdp.py)"}
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "train.py", "stage=sft", "trainer=fsdp", f"trainer.devices={n_gpus}", "logger=none",
               "stage.max_steps=20", "stage.batch_size=8", "evaluate.limit=16", f"paths.root={d}",
               f"paths.output_dir={d}/out", "print_config=false"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return {"status": "ok" if proc.returncode == 0 else "failed", "gpus": n_gpus, "rc": proc.returncode,
                "wall_s": round(time.perf_counter() - t0, 1), "tail": (proc.stdout + proc.stderr)[-1500:]}


# ------------------------------------------------------------------------------------------------ report


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# GPU check ({res['mode']}, {res['device']}, {res['when']})", ""]
    lines += ["| check | status | numbers |", "|---|---|---|"]
    for name, r in res["checks"].items():
        keep = {k: v for k, v in r.items() if k not in ("status", "trace", "tail", "error", "reason")}
        note = r.get("reason") or r.get("error") or ", ".join(f"{k} {v}" for k, v in keep.items())
        lines.append(f"| {name} | {r.get('status', 'ok')} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU dry run: the tiny model, small sizes (< 1 minute)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results" / "gpu"))
    ap.add_argument("--pytest-timeout", type=int, default=240)
    ap.add_argument("--no-pytest", action="store_true", help="leave out `pytest -m gpu` (the CI test does)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    if args.dry:
        torch.set_num_threads(1)
    res: dict[str, Any] = {"mode": "dry run (CPU, tiny model)" if args.dry else "full", "device": (
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__, "checks": {}}
    checks = res["checks"]
    if args.no_pytest:
        checks["pytest -m gpu"] = {"status": "skipped", "reason": "--no-pytest", "seconds": 0.0}
    else:
        section(checks, "pytest -m gpu", run_pytest, args.pytest_timeout)

    if args.dry:
        from benchmarks import common

        config, size = tiny_config(), {"batch": 2, "seq": 96, "grid": 8, "steps": 2}
        grpo_spec, grpo_size = common.tiny_spec(), {"G": 8, "new_tokens": 16, "prompts": 2, "steps": 1}
    elif not (REAL_3B / "config.json").exists():
        config = None
        res["note"] = f"real config absent at {REAL_3B}/config.json: full-size checks skipped"
    elif device.type != "cuda":
        config = None
        res["note"] = "no CUDA GPU: the full-size checks need one (DRY=1 runs the CPU dry run)"
    else:
        config, size = full_size_config(), {"batch": 4, "seq": 1024, "grid": 32, "steps": 5}
        grpo_size = {"G": 8, "new_tokens": 256, "prompts": 2, "steps": 2}
    if config is None:
        for name in ("sft", "sft + LoRA", "grpo expand", "grpo vllm"):
            checks[name] = {"status": "skipped", "reason": res["note"], "seconds": 0.0}
    else:
        section(checks, "sft", sft_throughput, config, device, False, *size.values())
        section(checks, "sft + LoRA", sft_throughput, config, device, True, *size.values())
        with tempfile.TemporaryDirectory() as d:
            if not args.dry:
                t0 = time.perf_counter()
                try:
                    full_size_folder(config, Path(d), device)
                except Exception as err:  # reported with the GRPO checks it stops
                    res["folder_error"] = f"{type(err).__name__}: {err}"
                res["folder_s"] = round(time.perf_counter() - t0, 1)
                grpo_spec = {"name": "qwen2_5_vl_3b", "path": d, "dtype": "bfloat16", "attn_implementation": "sdpa",
                             "quantization": "none", "image_size": 448, "lora": {"enabled": False}}
            for mode in ("expand", "vllm"):
                if not args.dry and not (Path(d) / "vocab.json").exists():
                    checks[f"grpo {mode}"] = {"status": "skipped", "seconds": 0.0,
                                              "reason": f"no full-size folder: {res.get('folder_error')}"}
                    continue
                section(checks, f"grpo {mode}", grpo_step_time, grpo_spec, device, mode, *grpo_size.values())
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    section(checks, "fsdp2 cli", fsdp_cli, n_gpus, 180)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
