"""The reward stages end to end at test size: grade -> reward (MLflow, continual adaptation) -> score (resume)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import mlflow
import pytest
import torch

from medgr2.data.wordnet import WordNetNotFoundError, load_wordnet
from medgr2.modules.reward import HEAD_CONFIG, RewardRegressor
from medgr2.modules.reward_scorer import RewardScorer
from medgr2.pipeline import run
from medgr2.pipeline.common import load_split
from medgr2.pipeline.grade import output_path as graded_dataset_path
from medgr2.pipeline.resumable_scoring import score_dataset
from medgr2.pipeline.reward import output_path as reward_model_path

# Tiny everything; the raw tiny model (no pretrained base) is enough to exercise the wiring.
SMALL = ["model.pretrain.enabled=false", "stage.source.size=24"]
TRAIN = ["stage.max_steps=4", "stage.val_every=2", "stage.batch_size=8", "stage.eval_batch_size=16",
         "stage.val_fraction=0.25", "stage.warmup_steps=0"]


@pytest.fixture(scope="module")
def wordnet():
    try:
        return load_wordnet()
    except WordNetNotFoundError as exc:  # the grade stage needs it; test_wordnet checks the error message
        pytest.skip(str(exc))


def test_the_score_stage_finds_the_model_the_reward_stage_caches(make_cfg) -> None:
    reward = make_cfg("stage=reward", "logger=none")
    assert reward_model_path(make_cfg("stage=score", "logger=none")) == reward_model_path(reward)
    # Settings that change the weights change the key; progress knobs do not.
    assert reward_model_path(make_cfg("stage=score", "stage.rm.lr=0.5")) != reward_model_path(reward)
    assert reward_model_path(make_cfg("stage=reward", "stage.val_every=7")) == reward_model_path(reward)


def test_the_default_configs_cache_keys_are_the_ones_existing_caches_were_built_with(tmp_path) -> None:
    # Pinned from the code before pipeline/reward.py was split in three (issue 17): users' D_grade and R_φ^0
    # caches, and the shipped R_φ^0, are found by these keys, so a refactoring must not move them.
    from conftest import compose_cfg

    from medgr2.pipeline.loop import sub_config
    from medgr2.pipeline.reward import reward_key

    cfg = compose_cfg(tmp_path, tmp_path / "cache", "logger=none", test_size=False)
    r0 = sub_config(cfg, "reward", tmp_path / "r0")  # how the loop builds R_φ^0
    assert reward_model_path(r0).name == "rm-96c430d0b7fb"
    assert graded_dataset_path(r0, r0.stage).name == "dgrade-c90fc9184dc2"
    for stage in ("reward", "score", "loop"):
        assert reward_key(compose_cfg(tmp_path, tmp_path / "cache", f"stage={stage}", test_size=False)) == "96c430d0b7fb"
    assert reward_key(compose_cfg(tmp_path, tmp_path / "cache", "stage=reward", "+stage.ship=true",
                                  test_size=False)) == "96c430d0b7fb"  # shipping is not a training setting


def _runs(cfg, stage: str):
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.logger.experiment])
    return runs[runs["tags.stage"] == stage]


def test_grade_stage_saves_four_grades_in_the_cache_and_logs_skips(make_cfg, wordnet) -> None:
    cfg = make_cfg("stage=grade", "stage.source.size=12", "logger=none")
    metrics = run(cfg)
    path = graded_dataset_path(cfg)
    ds = datasets.load_from_disk(str(path))
    assert metrics["grade/rows"] == len(ds) > 0
    assert set(ds["grade"]) == {"original", "synonym", "deletion", "irrelevant"}
    assert {"response", "target", "grade", "source_id", "image"} <= set(ds.column_names)
    meta = json.loads((path / "grading_meta.json").read_text())
    assert meta["n_records"] == 12 and "skipped" in meta
    # Another grading config is another cache entry.
    assert graded_dataset_path(make_cfg("stage=grade", "stage.source.size=12", "stage.grading.synonym=5")) != path

    # Optional hard negatives: the reference rationale with a wrong letter, at the irrelevant grade's value,
    # added on top of the cached four-grade set.
    cfg_hn = make_cfg("stage=grade", "stage.source.size=12", "stage.wrong_letter_rate=0.5", "logger=none")
    run(cfg_hn)
    hn = datasets.load_from_disk(str(graded_dataset_path(cfg_hn)))
    extra = hn.filter(lambda g: g == "wrong_letter", input_columns=["grade"])
    assert len(hn) == len(ds) + len(extra) and 0 < len(extra) < 12
    originals = {r["source_id"]: r["response"] for r in ds if r["grade"] == "original"}
    for r in extra:
        assert r["target"] == -6.0
        ref = originals[r["source_id"]]
        assert r["response"][:-10] == ref[:-10] and r["response"][-10] != ref[-10]  # only the letter differs

    # Optional image-grounding negatives: the reference response with another record's image, same grade value;
    # with both rates, both kinds of rows on top of the same cached four-grade set.
    cfg_img = make_cfg("stage=grade", "stage.source.size=12", "stage.wrong_letter_rate=0.5",
                       "stage.image_negative_rate=1.0", "logger=none")
    run(cfg_img)
    img = datasets.load_from_disk(str(graded_dataset_path(cfg_img))).cast_column("image", datasets.Image(decode=False))
    swaps = img.filter(lambda g: g == "image_swap", input_columns=["grade"])
    by_source = {r["source_id"]: r for r in ds.cast_column("image", datasets.Image(decode=False))
                 if r["grade"] == "original"}
    assert len(swaps) == len(by_source) > 0 and len(img) == len(hn) + len(swaps)  # rate 1: every record
    for r in swaps:
        own = by_source[r["source_id"]]
        assert r["target"] == -6.0 and r["response"] == own["response"]  # only the image differs
        assert r["image"]["bytes"] != own["image"]["bytes"]
        assert r["image"]["bytes"] in {o["image"]["bytes"] for o in by_source.values()}  # another record's image


def test_reward_stage_logs_correlations_to_mlflow_and_adapts_continually(make_cfg, wordnet) -> None:
    cfg = make_cfg("stage=reward", *SMALL, *TRAIN)
    metrics = run(cfg)
    for k in ("rm/spearman", "rm/kendall", "rm/mse", "rm/mae", "rm/sep_acc", "rm/pairwise_acc", "rm/image_pair_acc"):
        assert k in metrics
    export = Path(cfg.paths.output_dir) / "reward_model"
    cached = reward_model_path(cfg)
    assert (export / HEAD_CONFIG).exists() and (cached / HEAD_CONFIG).exists()
    row = _runs(cfg, "reward").iloc[0]
    assert row["status"] == "FINISHED"
    for k in ("rm/spearman", "rm/kendall", "rm/pairwise_acc", "val/spearman", "val/kendall", "val/mse",
              "val/sep_acc", "train/loss"):
        assert f"metrics.{k}" in row.index and row[f"metrics.{k}"] == row[f"metrics.{k}"], k  # present, not NaN
    assert row["tags.rm.generation"] == "0"
    first_id = row["run_id"]

    # Continual adaptation: retrain from the export on (here: the same) graded pairs; lineage is recorded.
    dgrade = graded_dataset_path(cfg)
    cfg2 = make_cfg("stage=reward", *SMALL, *TRAIN, f"stage.init={export}", f"stage.train_data={dgrade}",
                    f"paths.output_dir={Path(cfg.paths.root) / 'out2'}")
    before = RewardScorer(export, device="cpu").score(datasets.load_from_disk(str(dgrade)).select(range(4)))
    run(cfg2)
    child = _runs(cfg2, "reward")
    child = child[child["run_id"] != first_id].iloc[0]
    assert child["tags.rm.parent"] == str(export.resolve())
    assert child["tags.rm.parent_run_id"] == first_id and child["tags.rm.generation"] == "1"
    assert child["params.stage.init"] == str(export)
    export2 = Path(cfg2.paths.output_dir) / "reward_model"
    lineage = json.loads((export2 / HEAD_CONFIG).read_text())["lineage"]
    assert lineage["parent"] == str(export.resolve()) and lineage["generation"] == 1
    # It started from the parent (same normalisation) and moved on from it.
    assert json.loads((export2 / HEAD_CONFIG).read_text())["target_mean"] == pytest.approx(
        json.loads((export / HEAD_CONFIG).read_text())["target_mean"])
    after = RewardScorer(export2, device="cpu").score(datasets.load_from_disk(str(dgrade)).select(range(4)))
    assert after != before


@pytest.fixture
def rm_export(shared_cache, tmp_path) -> Path:
    """An untrained R_φ with a random head (scores vary by item), exported without any training."""
    torch.manual_seed(0)
    module = RewardRegressor({"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)},
                             head_hidden=8, target_mean=2.5, target_std=6.0)
    for p in module.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return module.export(tmp_path / "rm")


def test_score_stage_writes_a_score_column_and_provenance(make_cfg, rm_export, tmp_path) -> None:
    out = tmp_path / "scored"
    cfg = make_cfg("stage=score", "stage.source=split", f"stage.model={rm_export}", "stage.size=10", "stage.chunk_size=4",
                   f"stage.output={out}", "stage.progress=false", "logger=none")
    metrics = run(cfg)
    ds = datasets.load_from_disk(str(out))
    rows = load_split(cfg, "train", limit=10)
    assert ds.column_names == [*rows.column_names, "score"] and len(ds) == 10
    expected = RewardScorer(rm_export, device="cpu").score(rows)
    assert ds["score"] == pytest.approx(expected, abs=1e-5)
    prov = json.loads(ds[3]["provenance"])
    assert prov["reward"]["score"] == pytest.approx(expected[3], abs=1e-5) and "truth" in prov
    assert metrics["score/n"] == 10
    assert not out.with_name("scored.chunks").exists()  # chunks are cleaned up once the output is saved


class _Counting:
    """A scorer that counts what it scores and can fail after some calls (a killed run)."""

    def __init__(self, inner: RewardScorer, fail_after: int | None = None):
        self.inner, self.fail_after, self.calls, self.rows = inner, fail_after, 0, 0
        self.instruction, self.path = inner.instruction, inner.path

    def score(self, rows, batch_size=None, response_key="response"):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.rows += len(rows)
        return self.inner.score(rows, batch_size=batch_size, response_key=response_key)


def test_scoring_resumes_from_finished_chunks(make_cfg, rm_export, tmp_path) -> None:
    cfg = make_cfg("logger=none")
    rows = load_split(cfg, "train", limit=10)
    inner = RewardScorer(rm_export, device="cpu")
    out = tmp_path / "scored"
    chunks = tmp_path / "scored.chunks"
    with pytest.raises(KeyboardInterrupt):
        score_dataset(rows, _Counting(inner, fail_after=2), out, chunk_size=4, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in chunks.glob("chunk-*.json")) == ["chunk-00000.json", "chunk-00001.json"]
    # Mark a finished chunk: if the rerun recomputed it, the marks would be gone.
    c0 = json.loads((chunks / "chunk-00000.json").read_text())
    (chunks / "chunk-00000.json").write_text(json.dumps({**c0, "scores": [123.0] * 4}))
    again = _Counting(inner)
    ds = score_dataset(rows, again, out, chunk_size=4, progress=False)
    assert again.rows == 2 and again.calls == 1  # only the last chunk (rows 8-9) was scored
    assert ds["score"][:4] == [123.0] * 4
    assert ds["score"][4:] == pytest.approx(inner.score(rows.select(range(4, 10))), abs=1e-5)
    # A finished output with the same input and model is returned without scoring anything.
    third = _Counting(inner, fail_after=0)
    assert score_dataset(rows, third, out, chunk_size=4, progress=False)["score"] == ds["score"]
