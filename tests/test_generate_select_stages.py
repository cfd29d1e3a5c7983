"""``stage=generate``, ``stage=select`` and ``stage=distill`` through the real composed config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest
from fake_gemini import ITEM, OneItemGemini
from omegaconf import OmegaConf

from medgr2.data.pools import SelectionError
from medgr2.pipeline import run
from medgr2.pipeline.generate import generator_item
from medgr2.pipeline.select import output_path as select_output_path
from medgr2.pipeline.tracking import Tracker, resolved_config

QUIET = ("logger=none", "stage.progress=false")


def _generate(make_cfg, *overrides: str) -> dict[str, float]:
    return run(make_cfg("stage=generate", *QUIET, *overrides))


def test_generate_writes_provenance_counts_rejects_and_resumes(make_cfg):
    over = ("stage.n_sources=40", "stage.shard_size=16", "generator.defect_rates.broken_format=0.3")
    m = _generate(make_cfg, *over)
    assert m["generate/requested"] == 40 and m["generate/attempted"] == 40 and m["generate/complete"] == 1
    assert m["generate/kept"] + m["generate/rejected"] == 40
    assert m["generate/rejected"] > 0  # broken_format items are counted by reason
    assert m["generate/rejected"] == sum(v for k, v in m.items() if k.startswith("generate/rejected/"))
    cfg = make_cfg("stage=generate", *QUIET, *over)
    summary = json.loads((Path(cfg.paths.output_dir) / "generation_summary.json").read_text())
    out = Path(summary["out_dir"])
    assert out.parent == Path(cfg.paths.cache_dir).resolve() / "candidates"  # the keyed default
    ds = datasets.load_from_disk(summary["export"])
    assert len(ds) == m["generate/kept"]
    prov = json.loads(ds[0]["provenance"])
    assert {"backend", "model", "prompt_strategy", "prompt_version", "iteration", "seed", "response_sha256",
            "source_id"} <= set(prov)
    assert (prov["backend"], prov["prompt_strategy"]) == ("simulated", "metacognitive")

    again = _generate(make_cfg, *over)  # same command: nothing left to do
    assert again["generate/attempted"] == 0 and again["generate/shards_written"] == 0
    assert again["generate/shards_skipped"] == 3 and again["generate/kept"] == m["generate/kept"]
    assert datasets.load_from_disk(summary["export"])["id"] == ds["id"]


def _scored_pool(make_cfg, tmp_path: Path) -> Path:
    _generate(make_cfg, "stage.n_sources=12", f"stage.out_dir={tmp_path / 'gen'}")
    ds = datasets.load_from_disk(str(tmp_path / "gen" / "export" / "candidates"))
    scores = [float((7 * i) % 13) - 2.0 for i in range(len(ds))]  # distinct scores in [-2, 10]
    ds.add_column("score", scores).save_to_disk(str(tmp_path / "pool"))
    return tmp_path / "pool"


def test_select_topk_writes_exactly_k_rows(make_cfg, tmp_path):
    pool = _scored_pool(make_cfg, tmp_path)
    scored = datasets.load_from_disk(str(pool))
    ranked = [i for _, i in sorted(zip(scored["score"], scored["id"], strict=True), key=lambda t: (-t[0], t[1]))]
    cfg = make_cfg("stage=select", "select=topk", "k=5", f"stage.pool={pool}", "logger=none")
    m = run(cfg)
    assert m["select/n_selected"] == 5 and m["select/n_pool"] == len(scored)
    meta = json.loads((tmp_path / "out" / "selection_meta.json").read_text())
    assert meta["output"] == str(select_output_path(cfg))  # where other stages find it, publicly
    out = datasets.load_from_disk(meta["output"])
    assert len(out) == 5 and out["id"] == ranked[:5]  # best first, full rows
    assert out.column_names == scored.column_names and out[0]["image"] is not None

    # D_gen overlap: the two best are already selected -> the next five.
    scored.select(range(len(scored))).filter(lambda r: r["id"] in ranked[:2]).save_to_disk(str(tmp_path / "dgen"))
    run(make_cfg("stage=select", "select=topk", "select.k=5", f"stage.pool={pool}", f"stage.existing={tmp_path / 'dgen'}",
                 f"stage.out_dir={tmp_path / 'sel2'}", "logger=none"))
    assert datasets.load_from_disk(str(tmp_path / "sel2"))["id"] == ranked[2:7]

    with pytest.raises(SelectionError, match="outside the reward scale"):
        run(make_cfg("stage=select", "select=threshold", "tau=11", f"stage.pool={pool}", "logger=none"))


def test_select_from_a_generation_dir_and_without_a_pool(make_cfg, tmp_path):
    _generate(make_cfg, "stage.n_sources=10", f"stage.out_dir={tmp_path / 'gen'}")
    m = run(make_cfg("stage=select", "select=randk", "k=3", f"stage.pool={tmp_path / 'gen'}",
                     f"stage.out_dir={tmp_path / 'sel'}", "logger=none"))
    assert m["select/n_selected"] == 3 and len(datasets.load_from_disk(str(tmp_path / "sel"))) == 3
    with pytest.raises(SelectionError, match="no 'score' column: run stage=score first"):
        run(make_cfg("stage=select", f"stage.pool={tmp_path / 'gen'}", "logger=none"))
    with pytest.raises(SelectionError, match="run stage=score first"):  # default pool: nothing scored yet
        run(make_cfg("stage=select", "logger=none"))


# ------------------------------------------------------------------------------------------- secrets

SECRET = "AIzaTEST-stage-key-7e1d0c"


class _RecordingTracker(Tracker):
    """Everything a stage hands to MLflow — the params (``resolved_config``, exactly what
    ``MLflowTracker`` logs), metrics, tags and artifact files — kept in memory. A real SQLite MLflow
    store costs ~15 s to create on a loaded CI core; its mechanics are covered by test_tracking.py."""

    def __init__(self, cfg):
        self.params = resolved_config(cfg)
        self.records: list = []
        self.artifacts: list[bytes] = []

    def log_metrics(self, metrics, step=None):
        self.records.append(dict(metrics))

    def set_tags(self, tags):
        self.records.append(dict(tags))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(Path(path).read_bytes())


def test_gemini_key_never_reaches_config_mlflow_or_logs(make_cfg, tmp_path, monkeypatch, caplog, capsys):
    pytest.importorskip("google.genai")
    import medgr2.pipeline as pipeline

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    trackers: list[_RecordingTracker] = []
    monkeypatch.setattr(pipeline, "make_tracker", lambda cfg, stage: trackers.append(_RecordingTracker(cfg))
                        or trackers[-1])
    fake = OneItemGemini(ITEM)
    try:
        caplog.set_level(logging.DEBUG)
        cfg = make_cfg("stage=generate", "generator=gemini", f"generator.base_url={fake.url}",
                       "generator.requests_per_minute=null", "stage.n_sources=6", "stage.progress=false")
        m = run(cfg)
    finally:
        fake.close()
    assert m["generate/kept"] == 6 and set(fake.keys) == {SECRET}  # the key was used ...
    (tr,) = trackers
    assert tr.params["generator"]["api_key_env"] == "GEMINI_API_KEY"
    sent = json.dumps([tr.params, tr.records], default=str)
    assert SECRET not in sent and not any(SECRET.encode() in a for a in tr.artifacts)  # ... not in MLflow
    assert SECRET not in OmegaConf.to_yaml(cfg)  # nor in the config Hydra saves
    out = capsys.readouterr()
    assert SECRET not in caplog.text + out.out + out.err  # nor in logs
    files = [p for p in [*tmp_path.rglob("*"), *Path(cfg.paths.cache_dir).rglob("*")] if p.is_file()]
    assert files and not [p for p in files if SECRET.encode() in p.read_bytes()]  # nor on disk

    with pytest.raises(ValueError, match="never put credentials in a config"):
        run(make_cfg("stage=generate", "generator=gemini", "+generator.api_key=whatever", *QUIET))


# ------------------------------------------------------------------------------------------- distill


def test_distill_reuses_sft_and_exports_a_generator_for_hf(make_cfg, tmp_path):
    from medgr2.generation import parse_candidate

    _generate(make_cfg, "stage.n_sources=8", f"stage.out_dir={tmp_path / 'gen'}")
    selected = tmp_path / "gen" / "export" / "candidates"
    rows = datasets.load_from_disk(str(selected))
    item = generator_item(rows[0], "metacognitive")
    # The target is exactly what generation validation accepts for this image.
    back = parse_candidate(item["target"], rows[0], backend="hf", model="m", prompt="metacognitive", iteration=0,
                           seed=0)
    assert (back["question"], back["options"], back["answer"]) == (rows[0]["question"], rows[0]["options"],
                                                                   rows[0]["answer"])
    export = tmp_path / "generator"
    # No pretrained base (its cached pretraining is another test's subject): start from the built tiny VLM.
    m = run(make_cfg("stage=distill", f"stage.train_data={selected}", "stage.max_steps=2", "stage.batch_size=4",
                     f"stage.out_dir={export}", "model.pretrain.enabled=false", "logger=none"))
    assert m["distill/train_rows"] == len(rows)
    assert (export / "config.json").exists() and json.loads((export / "generator_meta.json").read_text())[
        "strategy"] == "metacognitive"
    g = _generate(make_cfg, "generator=hf", f"generator.weights={export}", "generator.max_new_tokens=8",
                  "generator.do_sample=false", "stage.n_sources=3", "model.pretrain.enabled=false", f"stage.out_dir={tmp_path / 'gen2'}")
    assert g["generate/requested"] == 3 and g["generate/kept"] + g["generate/rejected"] == 3
    manifest = json.loads((tmp_path / "gen2" / "manifest.json").read_text())
    assert str(export.resolve()) in manifest["config"]["backend"]["model"]


def test_generate_then_score_then_select_chain_on_the_defaults(make_cfg):
    # The three commands of the README with nothing but the test size (and a tiny R_φ): each stage finds the
    # previous one's output by its default settings.
    rm = ["stage.max_steps=3", "stage.source.size=24", "stage.max_val_sources=4"]
    gen = run(make_cfg("stage=generate", "logger=none", "stage.progress=false"))
    assert gen["generate/kept"] > 200  # 256 sources at test size
    scored = run(make_cfg("stage=score", "logger=none", "stage.progress=false",
                          *[r.replace("stage.", "stage.rm.", 1) for r in rm]))
    assert scored["score/n"] == gen["generate/kept"]
    sel = run(make_cfg("stage=select", "select=topk", "k=100", "logger=none",
                       *[r.replace("stage.", "stage.score.rm.", 1) for r in rm]))
    assert sel["select/n_selected"] == 100 and sel["select/n_pool"] == gen["generate/kept"]
