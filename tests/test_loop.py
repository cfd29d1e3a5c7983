"""stage=loop (Algorithm 1): end to end at tiny size, MLflow layout, resume after a kill, sweeps, pure helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from conftest import ROOT, TEST_OVERRIDES

from medgr2.pipeline import run
from medgr2.pipeline.adapt import policy_graded_rows
from medgr2.pipeline.loop import source_filter
from medgr2.pipeline.loop_state import LoopState, loop_dir, loop_key
from medgr2.pipeline.loop_table import results_table

# A whole loop in seconds: few sources, a few optimizer steps per stage.
TINY_LOOP = [
    "stage=loop",
    "stage.generate.n_sources=40",
    "stage.seed_size=8",
    "stage.sft.max_steps=3",
    "stage.sft.batch_size=8",
    "stage.sft.val_size=8",
    "stage.grpo.max_steps=2",
    "stage.grpo.train_size=8",
    "stage.grpo.max_new_tokens=12",
    "stage.reward.max_steps=3",
    "stage.reward.source.size=24",
    "stage.reward.max_val_sources=4",
    "stage.adapt.samples=8",
    "stage.adapt.replay=16",
    "stage.adapt.max_steps=2",
    "stage.adapt.batch_size=8",
    "evaluate.limit=16",
    "select=topk",
    "k=16",
]


def _runs(tracking_uri: str):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=["medgr2"])


@pytest.mark.slow
def test_loop_runs_one_iteration_end_to_end_and_logs_nested_mlflow_runs(make_cfg):
    from medgr2.models.factory import load_vlm
    from medgr2.pipeline.pretrain import base_weights

    cfg = make_cfg(*TINY_LOOP, "stage.iterations=1", "experiment_name=loop_test")
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "sft/test/acc" in metrics

    state = json.loads((loop_dir(cfg) / "loop_state.json").read_text())
    steps = set(state["steps"])
    assert {"setup/reward0", "setup/seed", "iter0/generate", "iter0/score", "iter0/select", "iter0/union",
            "iter0/sft", "iter0/grpo"} <= steps
    assert "iter0/adapt" not in steps  # the last iteration has no next R_φ to adapt
    # D_gen = D_seed (8) + the 16 selected candidates.
    assert state["steps"]["iter0/union"]["metrics"]["train_rows"] == 24
    train = datasets.load_from_disk(state["steps"]["iter0/union"]["outputs"]["train_data"])
    assert len(train) == 24 and len(set(train["id"])) == 24

    # The loop's final policy is trained: its weights differ from the pretrained base.
    policy = state["steps"]["iter0/grpo"]["outputs"]["policy"]
    base, _ = load_vlm(cfg.model, weights=base_weights(cfg), lora=False)
    trained, _ = load_vlm(cfg.model, weights=policy, lora=False)
    diffs = [(a - b).abs().max().item() for a, b in zip(base.parameters(), trained.parameters(), strict=True)]
    assert max(diffs) > 0 and all(torch.isfinite(p).all() for p in trained.parameters())

    runs = _runs(cfg.logger.tracking_uri)
    top = runs[(runs["tags.stage"] == "loop") & runs["tags.mlflow.parentRunId"].isna()]
    assert len(top) == 1
    row = top.iloc[0]
    assert row["status"] == "FINISHED" and row["tags.experiment"] == "loop_test"
    assert (row["tags.select_method"], row["tags.k"], row["tags.grpo"]) == ("topk", "16", "true")
    assert row["metrics.test/acc"] == pytest.approx(metrics["test/acc"])
    iters = runs[runs["tags.mlflow.parentRunId"] == row["run_id"]]
    assert "loop_iteration" in set(iters["tags.stage"])
    it_id = iters[iters["tags.stage"] == "loop_iteration"].iloc[0]["run_id"]
    children = set(runs[runs["tags.mlflow.parentRunId"] == it_id]["tags.stage"])
    assert {"generate", "score", "select", "sft", "grpo"} <= children
    from mlflow.tracking import MlflowClient

    arts = [a.path for a in MlflowClient(cfg.logger.tracking_uri).list_artifacts(row["run_id"])]
    assert "predictions.jsonl" in arts


@pytest.mark.slow
def test_loop_two_iterations_adapts_the_reward_model_and_grows_d_gen(make_cfg):
    cfg = make_cfg(*TINY_LOOP, "stage.iterations=2", "logger=none", "stage.eval_after_sft=false")
    run(cfg)
    state = json.loads((loop_dir(cfg) / "loop_state.json").read_text())["steps"]
    rm1 = state["iter0/adapt"]["outputs"]["reward_model"]
    from medgr2.modules.reward import HEAD_CONFIG

    assert json.loads((Path(rm1) / HEAD_CONFIG).read_text())["lineage"]["generation"] == 1
    # Iteration 1 scores with the adapted R_φ and its D_gen contains iteration 0's.
    assert state["iter1/union"]["metrics"]["train_rows"] == 8 + 16 + 16
    # New source images each iteration: no candidate id is shared between the two pools.
    c0 = datasets.load_from_disk(state["iter0/generate"]["outputs"]["candidates"])
    c1 = datasets.load_from_disk(state["iter1/generate"]["outputs"]["candidates"])
    assert not set(c0["id"]) & set(c1["id"])
    assert state["iter0/adapt"]["metrics"]["pref/rows"] == 8


def _loop_cli(tmp_path, cache, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *TEST_OVERRIDES, f"paths.cache_dir={cache}", *TINY_LOOP,
           "logger=none", "cpu_threads=1", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_loop_killed_mid_iteration_resumes_at_the_step_it_stopped_in(tmp_path, shared_cache):
    # Long enough SFT that the kill lands inside it.
    args = ("stage.iterations=1", "stage.sft.max_steps=80", "stage.sft.val_every=80", "checkpoint.every_n_train_steps=2",
            "stage.grpo_enabled=false")
    proc = _loop_cli(tmp_path, shared_cache, *args)
    state_file = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        files = list(tmp_path.glob("outputs/loops/*/loop_state.json"))
        if files and "iter0/union" in json.loads(files[0].read_text())["steps"]:
            state_file = files[0]
            # last.ckpt is written after its step checkpoint is complete: the kill never lands inside a write
            if (state_file.parent / "iter0/sft/checkpoints/last.ckpt").exists():
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the loop finished before it could be killed: " + proc.stdout.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state_file is not None
    done = json.loads(state_file.read_text())["steps"]
    assert "iter0/sft" not in done and "iter0/select" in done
    selected_before = datasets.load_from_disk(done["iter0/select"]["outputs"]["selected"])["id"]

    resumed = _loop_cli(tmp_path, shared_cache, *args)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    for step in ("generate", "score", "select", "union"):
        assert f"iter0/{step} already done, skipping" in out
    assert "loop: resuming sft from its checkpoint" in out
    final = json.loads(state_file.read_text())["steps"]
    assert "iter0/sft" in final and final["iter0/select"] == done["iter0/select"]
    assert datasets.load_from_disk(final["iter0/select"]["outputs"]["selected"])["id"] == selected_before


@pytest.mark.slow
def test_multirun_of_two_k_values_writes_two_mlflow_runs_sharing_one_scored_pool(tmp_path, shared_cache):
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "cache"  # own cache: count the scored pools this sweep makes
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "experiment=topk", "k=8,16", *TEST_OVERRIDES,
           f"paths.cache_dir={cache}", *[a for a in TINY_LOOP if not a.startswith(("k=", "select=", "stage=loop"))],
           "stage.grpo_enabled=false", "stage.iterations=1", "cpu_threads=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = _runs(f"sqlite:///{tmp_path}/mlflow.db")
    top = runs[(runs["tags.stage"] == "loop") & runs["tags.mlflow.parentRunId"].isna()]
    assert sorted(top["tags.k"]) == ["16", "8"] and set(top["status"]) == {"FINISHED"}
    assert set(top["tags.experiment"]) == {"topk"}
    assert len(list((cache / "scored").glob("scored-*"))) == 1  # scored once, shared by both jobs
    assert len(list((cache / "candidates").glob("cand-*"))) == 1
    assert len(list((cache / "selected").glob("sel-*"))) == 2

    # The report rebuilds Figure 2 and Table 1 from these real runs: its numbers are the logged ones.
    import pandas as pd

    from medgr2.report.cli import main as report_main

    out = tmp_path / "report"
    report_main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--out", str(out), "--only", "fig2,table1"])
    points = pd.read_csv(out / "fig2.csv")
    logged = {int(r["tags.k"]): r["metrics.test/acc"] for _, r in top.iterrows()}
    got = {int(r["k"]): r["acc"] for _, r in points.iterrows() if r["series"] == "TopK"}
    assert got == pytest.approx(logged)
    assert (out / "fig2.png").stat().st_size > 0 and "table1" in (out / "report.md").read_text().lower()


# ---------------------------------------------------------------------------------------- pure helpers


def test_policy_graded_rows_grade_by_the_answer_against_the_reference():
    rec = {"id": "q1", "image": None, "question": "Which?", "options": ["CT", "MRI"], "answer": "B",
           "answer_text": "MRI", "rationale": "r", "modality": "MRI", "question_type": "Modality Recognition",
           "dataset": "synthmed", "split": "train", "provenance": "{}"}
    rows = [rec, {**rec, "id": "q2"}, {**rec, "id": "q3"}]
    preds = [{"pred": "B", "completion": "<answer>B</answer>"}, {"pred": "A", "completion": "<answer>A</answer>"},
             {"pred": None, "completion": "  "}]
    out = policy_graded_rows(rows, preds, {"synonym": 6.0, "irrelevant": -6.0, "deletion": 0.0})
    assert [(r["grade"], r["target"]) for r in out] == [("policy_correct", 6.0), ("policy_wrong", -6.0),
                                                         ("policy_unanswered", 0.0)]
    assert [r["id"] for r in out] == ["q1#policy_correct", "q2#policy_wrong", "q3#policy_unanswered"]
    assert out[2]["response"] == "<answer></answer>" and out[1]["source_id"] == "q2"


def test_loop_key_ignores_operational_settings_but_not_the_selection(make_cfg):
    a = make_cfg("stage=loop")
    assert loop_key(a) == loop_key(make_cfg("stage=loop", "trainer.enable_progress_bar=true", "print_config=true"))
    assert loop_key(a) != loop_key(make_cfg("stage=loop", "select=topk", "k=1000"))
    assert loop_key(a) != loop_key(make_cfg("stage=loop", "stage.iterations=3"))


def test_source_filter_accepts_aliases_and_names_a_bad_source(make_cfg):
    assert source_filter(make_cfg("source=xray")) == {"modality": ["X-Ray"]}
    assert source_filter(make_cfg("source=diagnosis", "source_axis=question_type")) == {
        "question_type": ["Disease Diagnosis"]}
    assert source_filter(make_cfg()) == {}
    with pytest.raises(ValueError, match="unknown modality string 'PET-CT'"):
        source_filter(make_cfg("source=PET-CT"))


@pytest.mark.slow
def test_loop_grpo_prompts_train_draws_grpo_prompts_from_the_labelled_train_split(make_cfg):
    from medgr2.pipeline.common import load_split

    cfg = make_cfg(*TINY_LOOP, "stage.iterations=1", "stage.grpo_prompts=train", "logger=none")
    run(cfg)
    state = json.loads((loop_dir(cfg) / "loop_state.json").read_text())
    d_gen = set(datasets.load_from_disk(state["steps"]["iter0/union"]["outputs"]["train_data"])["id"])
    audit = json.loads((loop_dir(cfg) / "iter0" / "grpo" / "grpo_ranks" / "rank0.json").read_text())
    first_train = set(load_split(cfg, "train", limit=8)["id"])  # stage.grpo.train_size=8
    assert audit["prompt_ids"] and set(audit["prompt_ids"]) <= first_train
    assert not set(audit["prompt_ids"]) & d_gen


def test_loop_refuses_an_unknown_grpo_prompt_source(make_cfg):
    with pytest.raises(ValueError, match="stage.grpo_prompts='d_high': choose one of d_gen, train"):
        run(make_cfg("stage=loop", "stage.grpo_prompts=d_high", "logger=none"))


def test_loop_refuses_more_source_images_than_the_train_split_has(make_cfg):
    cfg = make_cfg("stage=loop", "stage.generate.n_sources=200", "stage.iterations=2", "logger=none")
    with pytest.raises(ValueError, match=r"needs 2 x 200 source images \+ 200 seed records = 600.*has 256"):
        run(cfg)


def test_loop_state_refuses_a_folder_of_another_config(tmp_path):
    s = LoopState(tmp_path, "aaa")
    s.record("iter0/generate", {"candidates": "x"}, {"generate/kept": 3})
    assert LoopState(tmp_path, "aaa").get("iter0/generate")["outputs"] == {"candidates": "x"}
    with pytest.raises(ValueError, match="another config"):
        LoopState(tmp_path, "bbb")


def test_results_table_shows_accuracies_in_percent_and_missing_values_as_dashes():
    rows = [{"generate/kept": 100, "select/n_selected": 40, "train_rows": 48, "sft/test/acc": 0.4, "test/acc": 0.45,
             "adapt/rm/spearman": 0.8123}, {"generate/kept": 90, "test/acc": 0.5}]
    table = results_table(rows, {"chance": 0.35})
    lines = table.splitlines()
    assert lines[1].split() == ["0", "100", "40", "48", "40.0", "45.0", "0.812"]
    assert lines[2].split() == ["1", "90", "-", "-", "-", "50.0", "-"]
    assert lines[-1] == "test baselines: chance 35.0"


def test_the_resume_point_is_last_ckpt_else_the_newest_step_checkpoint(tmp_path):
    from medgr2.pipeline.loop import last_checkpoint

    folder = tmp_path / "checkpoints"
    assert last_checkpoint(tmp_path) is None
    folder.mkdir()
    for name in ("step2.ckpt", "step10.ckpt", "step4.ckpt", "stepX.ckpt"):
        (folder / name).write_bytes(b"x")
    assert last_checkpoint(tmp_path) == str(folder / "step10.ckpt")  # killed before last.ckpt was copied
    (folder / "last.ckpt").write_bytes(b"x")
    assert last_checkpoint(tmp_path) == str(folder / "last.ckpt")
