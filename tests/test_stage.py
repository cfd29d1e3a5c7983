"""The stage skeleton (pipeline/stage.py): run bookkeeping in MLflow and the cached-product layer."""

from __future__ import annotations

import json

import pytest

from medgr2.pipeline.stage import ARTIFACT_META, Artifact, child_run, tracked_run
from medgr2.pipeline.tracking import MLflowTracker


def _tracker(tmp_path) -> MLflowTracker:
    return MLflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "stage-test", str(tmp_path / "artifacts"), "job",
                         {"stage": "job"}, {"seed": 0})


def test_child_runs_end_finished_or_failed_with_the_exception_passed_on(tmp_path):
    job = _tracker(tmp_path)
    with child_run(job, "ok", {"iteration": "0"}) as ok:
        ok.log_metrics({"x": 1.0})
    with pytest.raises(RuntimeError, match="boom"), child_run(job, "broken"):
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), tracked_run(_tracker(tmp_path)) as killed:
        raise KeyboardInterrupt
    client = job.client
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("stage-test").experiment_id])}
    assert runs["ok"].info.status == "FINISHED" and runs["ok"].data.tags["stage"] == "ok"
    assert runs["ok"].data.tags["mlflow.parentRunId"] == job.run_id and runs["ok"].data.tags["iteration"] == "0"
    assert runs["ok"].data.metrics == {"x": 1.0}
    assert runs["broken"].info.status == "FAILED"
    assert client.get_run(killed.run_id).info.status == "FAILED"
    assert client.get_run(job.run_id).info.status == "RUNNING"  # a child's end is not its parent's


def test_an_artifact_is_built_once_per_key_and_a_failed_build_leaves_nothing(tmp_path):
    builds = []

    def build(tmp):
        builds.append(tmp)
        (tmp / "data.txt").write_text("product")
        return {"rows": 3}

    art = Artifact(tmp_path / "product", {"fingerprint": "abc", "shards": ["s0", "s1"]})
    assert art.meta() is None
    meta = art.get_or_build(build)
    assert meta == {"key": {"fingerprint": "abc", "shards": ["s0", "s1"]}, "rows": 3}
    assert json.loads((tmp_path / "product" / ARTIFACT_META).read_text()) == meta
    assert art.get_or_build(build) == meta and len(builds) == 1  # reused, not rebuilt
    assert art.get_or_build(build, rebuild=True) == meta and len(builds) == 2

    # Another key in the same folder (e.g. a user's out_dir reused for other settings) is rebuilt.
    other = Artifact(tmp_path / "product", "another-key")
    assert other.meta() is None
    other.get_or_build(build)
    assert len(builds) == 3 and art.meta() is None

    def broken(tmp):
        (tmp / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Artifact(tmp_path / "never", "k").get_or_build(broken)
    assert not (tmp_path / "never").exists() and not any(p.name.startswith(".never") for p in tmp_path.iterdir())


def test_an_artifact_accepts_the_field_its_product_recorded_the_key_under_before(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "export_meta.json").write_text(json.dumps({"stamp": {"shards": {"0": "a.parquet"}}, "rows": 7}))
    legacy = Artifact(folder, {"shards": {"0": "a.parquet"}}, "export_meta.json", legacy_key="stamp")
    assert legacy.get_or_build(lambda tmp: pytest.fail("rebuilt a valid legacy folder"))["rows"] == 7
    assert Artifact(folder, {"shards": {"0": "b.parquet"}}, "export_meta.json", legacy_key="stamp").meta() is None
