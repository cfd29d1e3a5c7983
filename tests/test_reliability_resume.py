"""Reliability: SIGKILL at chosen points of stage=score and stage=grpo, then resume.

The stage runs in a forked child (it inherits the imported libraries, so no start-up cost) that SIGKILLs
itself at the injected point — a real SIGKILL: no ``finally``, no flush, no cleanup. The rerun must end
with exactly what an uninterrupted run gives (scores) or with the full step count from the last
checkpoint (GRPO), and no half-written file may take the place of a good one.
(Kill and resume of stage=generate: test_generation_store.py; stage=sft: test_sft_stage.py; stage=loop
through the CLI: test_loop.py.)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
import torch

from medgr2.pipeline import run


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(cfg, patch: Callable[[], None]) -> None:
    patch()
    run(cfg)
    os._exit(0)  # finished without reaching the kill point


def run_killed(cfg, patch: Callable[[], None], timeout: float = 180) -> None:
    """Run ``cfg``'s stage in a forked child that applies ``patch`` (which arranges the SIGKILL) first."""
    proc = mp.get_context("fork").Process(target=_child, args=(cfg, patch))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the killed stage hung")
    assert proc.exitcode == -signal.SIGKILL, f"the stage was not killed (exit code {proc.exitcode})"


# ---------------------------------------------------------------------------------------------- score


@pytest.fixture(scope="module")
def rm_export(shared_cache, tmp_path_factory) -> Path:
    """An untrained R_φ with a random head (scores differ per item), exported without training."""
    from medgr2.modules.reward import RewardRegressor

    torch.manual_seed(0)
    module = RewardRegressor({"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)},
                             head_hidden=8, target_mean=2.5, target_std=6.0)
    for p in module.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return module.export(tmp_path_factory.mktemp("rm") / "rm")


def _score_cfg(make_cfg, rm: Path, out: Path):
    return make_cfg("stage=score", "stage.source=split", f"stage.model={rm}", "stage.size=24", "stage.chunk_size=4", "stage.batch_size=4",
                    f"stage.output={out}", "stage.progress=false", "logger=none")


@pytest.fixture(scope="module")
def reference_scores(rm_export, shared_cache, tmp_path_factory):
    from conftest import compose_cfg

    root = tmp_path_factory.mktemp("score_ref")
    cfg = compose_cfg(root, shared_cache, "stage=score", "stage.source=split", f"stage.model={rm_export}", "stage.size=24",
                      "stage.chunk_size=4", "stage.batch_size=4", f"stage.output={root / 'ref'}",
                      "stage.progress=false", "logger=none")
    run(cfg)
    ds = datasets.load_from_disk(str(root / "ref"))
    return ds["id"], ds["score"]


def _kill_in_scoring_call(n: int) -> Callable[[], None]:
    """SIGKILL inside the n-th scorer call (chunks before it are saved, this one is lost)."""
    def patch():
        from medgr2.modules.reward_scorer import RewardScorer

        orig, calls = RewardScorer.score, [0]

        def score(self, *a, **kw):
            calls[0] += 1
            if calls[0] == n:
                _die()
            return orig(self, *a, **kw)

        RewardScorer.score = score
    return patch


def _kill_while_writing_chunk(n: int) -> Callable[[], None]:
    """SIGKILL after half of chunk n's file was written under its temporary name."""
    def patch():
        import medgr2.pipeline.resumable_scoring as scoring

        orig = scoring.atomic_write_json

        def write(path, obj):
            path = Path(path)
            if path.name == f"chunk-{n:05d}.json":
                (path.parent / f".{path.name}.partial").write_text(json.dumps(obj)[:20])
                _die()
            orig(path, obj)

        scoring.atomic_write_json = write
    return patch


def _kill_while_saving_the_output() -> Callable[[], None]:
    """SIGKILL after the scored dataset was saved to the temporary folder, before its rename (the artifact
    layer writes the meta, then renames)."""
    def patch():
        import medgr2.pipeline.resumable_scoring as scoring
        import medgr2.pipeline.stage as stage

        orig = stage.atomic_write_json

        def write(path, obj):
            if Path(path).name == scoring.SCORE_META:
                _die()
            orig(path, obj)

        stage.atomic_write_json = write
    return patch


KILL_POINTS = {
    # Two seeded "random" points inside scoring, one inside a chunk write, one inside the final save.
    "scoring_call_seed0": _kill_in_scoring_call(random.Random(0).randint(2, 5)),
    "scoring_call_seed1": _kill_in_scoring_call(random.Random(1).randint(2, 5)),
    "chunk_write": _kill_while_writing_chunk(random.Random(2).randint(1, 4)),
    "final_save": _kill_while_saving_the_output(),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_score_killed_then_rerun_gives_exactly_the_uninterrupted_scores(make_cfg, rm_export, reference_scores,
                                                                         tmp_path, point):
    out = tmp_path / "scored"
    cfg = _score_cfg(make_cfg, rm_export, out)
    run_killed(cfg, KILL_POINTS[point])
    assert not (out / "dataset_info.json").exists()  # nothing half-done took the output's place
    chunks = out.with_name("scored.chunks")
    saved = sorted(p.name for p in chunks.glob("chunk-*.json"))
    assert saved == [f"chunk-{i:05d}.json" for i in range(len(saved))]  # only whole chunks count
    for p in chunks.glob("chunk-*.json"):
        assert len(json.loads(p.read_text())["scores"]) == 4

    run(_score_cfg(make_cfg, rm_export, out))
    ds = datasets.load_from_disk(str(out))
    ids, scores = reference_scores
    assert ds["id"] == ids and ds["score"] == scores  # exactly, not approximately
    assert not chunks.exists()


# ----------------------------------------------------------------------------------------------- grpo


GRPO = ["stage=grpo", "model.pretrain.enabled=false", "stage.train_size=16", "stage.batch_size=2",
        "stage.max_new_tokens=6", "stage.num_generations=2", "stage.evaluate=false", "checkpoint.every_n_train_steps=2",
        "logger=none"]


def _kill_at_step(step: int) -> Callable[[], None]:
    def patch():
        from medgr2.modules.grpo import GRPOPolicy

        orig = GRPOPolicy.training_step

        def training_step(self, batch, batch_idx):
            if self.global_step >= step:
                _die()
            return orig(self, batch, batch_idx)

        GRPOPolicy.training_step = training_step
    return patch


def test_grpo_killed_mid_training_resumes_from_its_last_checkpoint_to_the_full_step_count(make_cfg):
    cfg = make_cfg(*GRPO, "stage.max_steps=8")
    kill_at = random.Random(3).randint(3, 6)  # after at least one checkpoint (every 2 steps)
    run_killed(cfg, _kill_at_step(kill_at))
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    assert last.exists() and not (Path(cfg.paths.output_dir) / "policy").exists()
    # Our own checkpoints load without unpickling arbitrary objects.
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == kill_at - kill_at % 2

    resumed = make_cfg(*GRPO, "stage.max_steps=8", f"stage.ckpt_path={last}")
    run(resumed)
    audit = json.loads((Path(resumed.paths.output_dir) / "grpo_ranks" / "rank0.json").read_text())
    assert audit["steps"] == 8
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 8
    assert (Path(resumed.paths.output_dir) / "policy" / "model.safetensors").exists()
