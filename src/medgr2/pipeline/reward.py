# Over ~450 lines: its split by responsibility is open work of issue 17 (see docs/architecture.md); behaviour is tested as it is.
"""Reward-model stages (paper §3, "Reward Model R_φ"): ``stage=grade``, ``stage=reward``, ``stage=score``.

* ``grade``: D_grade — four graded responses per reference record (:func:`medgr2.data.grading.build_graded`),
  saved as a ``datasets`` folder under ``<cache>/grade/`` keyed by the source and grading config.
* ``reward``: train :class:`~medgr2.modules.reward.RewardRegressor` on D_grade (built when missing) with a
  held-out split *by source record* (all grades of a question are on the same side), from the cached
  pretrained base or from ``stage.init`` — a previous R_φ export or Lightning checkpoint, for continual
  adaptation on new graded pairs (``stage.train_data``); lineage goes to MLflow tags. The model is exported
  to the run's folder and to :func:`reward_model_path` (keyed by config) where later stages find it.
* ``score``: batched no-grad scoring of a dataset of candidate triplets; writes a ``score`` column (and a
  ``reward`` entry into each row's provenance) to ``stage.output``. Work is done in chunks, each saved
  atomically, so a killed run resumes where it stopped.

Which R_φ a non-reward stage means: ``cfg.stage.rm`` — the reward stage's settings, included by
``conf/stage/score.yaml`` with ``defaults: [reward@rm]`` (a GRPO stage can do the same) — or the defaults of
``conf/stage/reward.yaml`` when a stage has no ``rm`` node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig, OmegaConf

from medgr2.data.grading import GRADED_FEATURES, GRADES, GradeConfig, build_graded, rng_for, split_response
from medgr2.data.prompting import response_text
from medgr2.data.schema import LETTERS, to_dataset
from medgr2.pipeline.common import (
    cache_dir,
    fingerprint,
    instruction,
    isolated_seed,
    load_split,
    output_dir,
    product_seed,
    seed_part,
    to_dict,
)
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
GRADE_META = "grading_meta.json"
SCORE_META = "score_meta.json"


# ============================================================================================ stage=grade


def grade_config(node: DictConfig | Mapping[str, Any]) -> GradeConfig:
    """``stage.grading`` -> :class:`GradeConfig`."""
    d = dict(to_dict(node) or {})
    unknown = set(d) - set(GradeConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown stage.grading keys {sorted(unknown)}; known: {sorted(GradeConfig.__dataclass_fields__)}")
    return GradeConfig(**d)


def _source_records(cfg: DictConfig, g: DictConfig) -> datasets.Dataset:
    """The reference records D_grade is made from: ``source.path`` or the benchmark's ``source.split``."""
    src = g.source
    size = src.get("size")
    ds = datasets.load_from_disk(str(src.path)) if src.get("path") else load_split(cfg, str(src.split), limit=size)
    if size is not None and len(ds) > int(size):
        ds = ds.select(range(int(size)))
    return ds


def graded_dataset_path(cfg: DictConfig, g: DictConfig | None = None) -> Path:
    """Where D_grade for these settings lives (``g``: a node with ``source`` and ``grading``)."""
    g = g if g is not None else cfg.stage
    src = g.source
    if src.get("path"):
        ds = datasets.load_from_disk(str(src.path))
        key = fingerprint("path", str(Path(src.path).resolve()), ds._fingerprint, src.get("size"))
    else:
        key = fingerprint("split", cfg.data, str(src.split), src.get("size"))
    extra = float(g.get("wrong_letter_rate") or 0.0)
    parts = (key, g.grading) if extra == 0 else (key, g.grading, {"wrong_letter_rate": extra})
    return cache_dir(cfg) / "grade" / f"dgrade-{fingerprint(*parts)}"


def build_grade_dataset(cfg: DictConfig, g: DictConfig | None = None,
                        tracker: Tracker | None = None) -> tuple[datasets.Dataset, Path]:
    """D_grade for these settings: loaded from the cache, or built, saved there and returned.

    Logs rows per grade and the skip counts (records without a rationale, rows that could not honestly
    carry their grade…) to the log and, when given, the tracker.
    """
    g = g if g is not None else cfg.stage
    path = graded_dataset_path(cfg, g)
    rate = float(g.get("wrong_letter_rate") or 0.0)
    if (path / "dataset_info.json").exists():
        log.info("reusing D_grade %s", path)
        meta = json.loads((path / GRADE_META).read_text()) if (path / GRADE_META).exists() else {}
    elif rate > 0:
        # The paper's four grades (cached on their own: the WordNet pass is the slow part) + hard negatives.
        plain = OmegaConf.create(to_dict(g))
        plain.wrong_letter_rate = 0.0
        base, _ = build_grade_dataset(cfg, plain)
        meta = json.loads((graded_dataset_path(cfg, plain) / GRADE_META).read_text())
        gcfg = grade_config(g.grading)
        originals = base.filter(lambda grade: grade == "original", input_columns=["grade"]).to_list()
        extra = wrong_letter_rows(originals, gcfg.seed, target=gcfg.irrelevant, rate=rate)
        ds = datasets.concatenate_datasets([base, to_dataset(extra, extra_features=GRADED_FEATURES)])
        meta.update(n_rows=len(ds), rows_per_grade={**meta["rows_per_grade"], "wrong_letter": len(extra)},
                    wrong_letter_rate=rate)
        with atomic_dir(path) as tmp:
            ds.save_to_disk(str(tmp))
            atomic_write_json(tmp / GRADE_META, meta)
        log.info("D_grade + %d wrong-letter hard negatives -> %s", len(extra), path)
    else:
        records = _source_records(cfg, g)
        rows, skipped = build_graded(list(records), grade_config(g.grading))
        if not rows:
            raise ValueError(f"D_grade is empty: no usable record among {len(records)} (skipped: {dict(skipped)})")
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["grade"]] = counts.get(row["grade"], 0) + 1
        meta = {"n_records": len(records), "n_rows": len(rows), "rows_per_grade": counts,
                "skipped": dict(skipped), "grading": to_dict(g.grading), "source": to_dict(g.source)}
        with atomic_dir(path) as tmp:
            to_dataset(rows, extra_features=GRADED_FEATURES).save_to_disk(str(tmp))
            atomic_write_json(tmp / GRADE_META, meta)
        log.info("D_grade: %d rows from %d records -> %s; skipped %s", len(rows), len(records), path,
                 dict(skipped))
    if tracker is not None and meta:
        m = {"grade/rows": meta["n_rows"], "grade/records": meta["n_records"]}
        m.update({f"grade/rows/{k}": v for k, v in meta["rows_per_grade"].items()})
        m.update({f"grade/skipped/{k}": v for k, v in meta["skipped"].items()})
        tracker.log_metrics({k: float(v) for k, v in m.items()})
        tracker.set_tags({"dgrade_path": str(path)})
    return datasets.load_from_disk(str(path)), path


def run_grade(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    ds, path = build_grade_dataset(cfg, cfg.stage, tracker)
    meta = json.loads((path / GRADE_META).read_text())
    print(f"D_grade: {len(ds)} rows {meta['rows_per_grade']} at {path}; skipped {meta['skipped']}")
    return {"grade/rows": float(len(ds))}


# ============================================================================================ stage=reward


def split_by_source(source_ids: Sequence[str], val_fraction: float, seed: int = 0,
                    max_val_sources: int | None = None) -> tuple[list[int], list[int]]:
    """Row indices ``(train, val)`` with every source record's rows on one side (no leakage).

    The held-out sources are the ``val_fraction`` (at most ``max_val_sources``) with the smallest
    SHA-256 of ``(seed, source_id)``: the choice depends on the ids only, not on row order, and stays
    stable when more data is added.
    """
    sources = sorted(set(source_ids))
    n_val = min(len(sources) - 1, max(1, round(val_fraction * len(sources)))) if val_fraction > 0 else 0
    if max_val_sources is not None:
        n_val = min(n_val, int(max_val_sources))

    def h(sid: str) -> str:
        return hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest()

    held = set(sorted(sources, key=h)[:max(0, n_val)])
    train = [i for i, s in enumerate(source_ids) if s not in held]
    val = [i for i, s in enumerate(source_ids) if s in held]
    return train, val


def wrong_letter_rows(rows: Sequence[Mapping[str, Any]], seed: int = 0, target: float = math.nan,
                      rate: float = 1.0) -> list[dict[str, Any]]:
    """For ``original`` rows: the same rationale with a wrong answer letter (grade ``wrong_letter``).

    With ``target`` NaN these are the pairwise probes of the reward stage (R_φ should score the original
    higher); with ``target`` = the irrelevant grade's value they are hard negatives for D_grade — a
    fluent, image-consistent rationale whose final answer is hallucinated. ``rate``: share of the
    records that get one (chosen per source id, deterministically). The wrong letter is drawn with
    :func:`rng_for` ``(seed, source_id, "wrong_letter")``, so a probe and a hard negative of the same record
    are the same text.
    """
    from medgr2.data.reward_items import PROBE_GRADE

    out = []
    for row in rows:
        if row["grade"] != "original":
            continue
        sid = str(row["source_id"])
        if rate < 1.0 and rng_for(seed, sid, "wrong_letter_pick").random() >= rate:
            continue
        parts = split_response(row["response"])
        n = len(row["options"] or [])
        if parts is None or n < 2:
            continue
        rationale, letter = parts
        wrong = [c for c in LETTERS[:n] if c != letter.strip().upper()]
        choice = rng_for(seed, sid, PROBE_GRADE).choice(wrong)
        prov = json.loads(row.get("provenance") or "{}")
        prov["grading"] = {"grade": PROBE_GRADE, "seed": seed, "letter": choice}
        out.append({**row, "id": f"{sid}#{PROBE_GRADE}", "response": response_text(rationale, choice),
                    "target": target, "grade": PROBE_GRADE, "provenance": json.dumps(prov, sort_keys=True)})
    return out


def wrong_letter_probes(rows: Sequence[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The pairwise probes: :func:`wrong_letter_rows` with target NaN for every ``original`` row."""
    return wrong_letter_rows(rows, seed)


def _rm_node(cfg: DictConfig) -> DictConfig:
    """The reward-model settings this config means (see the module docstring)."""
    if cfg.stage.name == "reward":
        return cfg.stage
    if cfg.stage.get("rm") is not None:
        return cfg.stage.rm
    files = [CONF_DIR / "stage" / "grade.yaml", CONF_DIR / "stage" / "reward.yaml"]
    if not all(f.exists() for f in files):
        raise ValueError("no reward-model settings: give this stage an `rm` node (defaults: [reward@rm]) "
                         "or set the R_φ export path explicitly")
    nodes = [OmegaConf.load(f) for f in files]
    for n in nodes:
        n.pop("defaults", None)
    return OmegaConf.merge(*nodes)


def reward_key(cfg: DictConfig, r: DictConfig | None = None) -> str:
    """Cache key of an R_φ: the model, the data and the reward settings (not the output/progress knobs)."""
    r = r if r is not None else _rm_node(cfg)
    model = {k: v for k, v in to_dict(cfg.model).items() if k != "cache_dir"}
    # Knobs that do not change the trained weights stay out of the key.
    settings = {k: v for k, v in to_dict(r).items() if k not in ("name", "val_every", "eval_batch_size", "ckpt_path")}
    return fingerprint("rm-v1", model, cfg.data, settings, cfg.data.get("instruction"), *seed_part(cfg, "reward"))


def reward_model_path(cfg: DictConfig, r: DictConfig | None = None) -> Path:
    """The stable cache location of the R_φ export for these settings (may not exist yet)."""
    return cache_dir(cfg) / "reward" / f"rm-{reward_key(cfg, r)}"


def _training_item(row: Mapping[str, Any], instruction: str, resolve_letter: bool) -> dict[str, Any]:
    from medgr2.data.reward_items import reward_item

    item = reward_item(row, instruction, resolve_letter=resolve_letter)
    item.update(score_target=float(row["target"]), grade=row["grade"], source_id=row["source_id"])
    return item


def _parent_lineage(init: str) -> dict[str, Any]:
    from medgr2.modules.reward import HEAD_CONFIG

    meta_file = Path(init) / HEAD_CONFIG
    parent = json.loads(meta_file.read_text()).get("lineage", {}) if meta_file.exists() else {}
    return {"parent": str(Path(init).resolve()), "parent_run_id": parent.get("run_id"),
            "generation": int(parent.get("generation", 0)) + 1}


def _init_module(cfg: DictConfig, r: DictConfig, tracker: Tracker, train_targets: Sequence[float]):
    """A fresh RewardRegressor from the base (or ``r.init``), with the normalisation it should use."""
    from medgr2.modules.reward import HEAD_CONFIG, RewardRegressor
    from medgr2.pipeline.pretrain import base_weights

    init = r.get("init")
    if init and Path(init).is_dir():
        meta = json.loads((Path(init) / HEAD_CONFIG).read_text())
        # The parent's head and its output scale belong together: keep its normalisation.
        mean, std, head_hidden, weights = meta["target_mean"], meta["target_std"], meta["head_hidden"], str(init)
        pooling = str(meta.get("pooling", "last"))
        resolve = bool(meta.get("resolve_letter", False))
    else:
        if init and not Path(init).exists():
            raise FileNotFoundError(f"stage.init={init} does not exist (an R_φ export folder or a .ckpt file)")
        weights = base_weights(cfg, tracker)
        head_hidden = int(r.head_hidden)
        pooling = str(r.get("pooling", "last"))
        resolve = bool(r.get("resolve_letter", True))
        if r.get("normalize", True) and len(train_targets) > 1:
            n = len(train_targets)
            mean = sum(train_targets) / n
            std = math.sqrt(sum((t - mean) ** 2 for t in train_targets) / n) or 1.0
        else:
            mean, std = 0.0, 1.0
    module = RewardRegressor(model=to_dict(cfg.model), weights=weights, lr=float(r.lr),
                             weight_decay=float(r.weight_decay), warmup_steps=int(r.warmup_steps),
                             total_steps=int(r.max_steps), lora=r.get("lora"), head_hidden=int(head_hidden),
                             target_mean=float(mean), target_std=float(std),
                             head_lr=float(r.head_lr) if r.get("head_lr") else None,
                             hi=float(r.grading.synonym), lo=float(r.grading.deletion), instruction=instruction(cfg),
                             pooling=pooling, resolve_letter=resolve)
    if init and Path(init).is_dir():
        module.load_head(init)
    elif init:  # a Lightning checkpoint of a previous reward run (same model and head settings)
        import torch

        # weights_only: our checkpoints hold tensors and plain containers; never unpickle arbitrary objects.
        state = torch.load(str(init), map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    return module


def train_reward(cfg: DictConfig, r: DictConfig, tracker: Tracker, out: Path) -> tuple[dict[str, float], Path]:
    """Train R_φ with settings ``r``; export to ``out/reward_model`` and the cache. Returns metrics, cache path."""
    from torch.utils.data import DataLoader

    from medgr2.modules.reward import reward_metrics
    from medgr2.modules.reward_scorer import RewardScorer
    from medgr2.pipeline.common import build_trainer
    from medgr2.training.item_dataset import ItemDataset
    from medgr2.training.reward_collate import RewardCollator

    if r.get("train_data"):
        rows = datasets.load_from_disk(str(r.train_data))
        missing = set(GRADED_FEATURES) - set(rows.column_names)
        if missing:
            raise ValueError(f"stage.train_data={r.train_data} is not a graded dataset: no {sorted(missing)}")
        data_path = Path(r.train_data)
    else:
        rows, data_path = build_grade_dataset(cfg, r, tracker)
    train_idx, val_idx = split_by_source(rows["source_id"], float(r.val_fraction), product_seed(cfg, "reward"),
                                         r.get("max_val_sources"))
    train_rows = rows.select(train_idx)
    # Regression metrics are on the paper's four grades; the wrong-letter probes (built afresh for the
    # held-out records, never trained on) measure the pairwise accuracy.
    val_rows = [v for v in rows.select(val_idx).to_list() if v["grade"] in GRADES]
    probes = wrong_letter_probes(val_rows, int(r.grading.seed))
    val_all = val_rows + probes
    log.info("R_φ data %s: %d train rows, %d held-out rows (%d sources) + %d wrong-letter probes",
             data_path, len(train_rows), len(val_rows), len({v["source_id"] for v in val_rows}), len(probes))

    module = _init_module(cfg, r, tracker, train_rows["target"])
    lineage = _parent_lineage(str(r.init)) if r.get("init") else {"parent": None, "generation": 0}
    lineage.update(run_id=tracker.run_id, train_data=str(data_path))
    tracker.set_tags({f"rm.{k}": str(v) for k, v in lineage.items() if v is not None})
    instr, resolve = module.instruction, module.resolve_letter
    collate = RewardCollator(module.processor)

    def to_item(row: Mapping[str, Any]) -> dict[str, Any]:
        return _training_item(row, instr, resolve)

    bs = int(r.batch_size)
    train_dl = DataLoader(ItemDataset(train_rows, to_item), batch_size=bs, shuffle=True, collate_fn=collate,
                          num_workers=0, drop_last=len(train_rows) > bs)
    val_dl = DataLoader(ItemDataset(val_all, to_item), batch_size=int(r.eval_batch_size), collate_fn=collate)
    trainer = build_trainer(cfg, tracker, max_steps=int(r.max_steps), ckpt_dir=out / "checkpoints",
                            val_every=min(int(r.val_every), int(r.max_steps)) if val_all else None)
    trainer.fit(module, train_dl, val_dl if val_all else None, ckpt_path=r.get("ckpt_path"))

    metrics: dict[str, float] = {"rm/train_rows": float(len(train_rows)), "rm/val_rows": float(len(val_rows))}
    cache_path = reward_model_path(cfg, r)
    if trainer.is_global_zero:
        if val_all:
            # The held-out numbers of the final model, scored the way later stages score (eval, no grad).
            scores = RewardScorer(module, batch_size=int(r.eval_batch_size)).score(val_all)
            final = reward_metrics(scores, [float(v["target"]) for v in val_all], [v["grade"] for v in val_all],
                                   [v["source_id"] for v in val_all], hi=module.hparams.hi, lo=module.hparams.lo)
            metrics.update({f"rm/{k}": v for k, v in final.items()})
        export = module.export(out / "reward_model", lineage)
        with atomic_dir(cache_path) as tmp:
            shutil.copytree(export, tmp, dirs_exist_ok=True)
        tracker.set_tags({"rm.export": str(export), "rm.cache": str(cache_path)})
        tracker.log_metrics(metrics)
        log.info("R_φ held-out: %s", {k: round(v, 4) for k, v in metrics.items()})
    trainer.strategy.barrier()
    return metrics, cache_path


def run_reward(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    with isolated_seed(product_seed(cfg, "reward")):  # it fills the same cache entry as the loop's R_φ^0
        metrics, path = train_reward(cfg, cfg.stage, tracker, output_dir(cfg))
    keys = ("rm/spearman", "rm/kendall", "rm/mse", "rm/mae", "rm/sep_acc", "rm/pairwise_acc")
    print("R_φ held-out: " + ", ".join(f"{k.split('/')[1]} {metrics[k]:.3f}" for k in keys if k in metrics))
    print(f"R_φ export: {path}")
    return metrics


def ensure_reward_model(cfg: DictConfig, tracker: Tracker | None = None) -> Path:
    """The cached R_φ for this config's reward settings, trained first when missing."""
    r = _rm_node(cfg)
    path = reward_model_path(cfg, r)
    from medgr2.modules.reward import HEAD_CONFIG

    if (path / HEAD_CONFIG).exists():
        log.info("reusing the cached R_φ %s", path)
        return path
    log.info("no cached R_φ at %s: training it", path)
    with isolated_seed(product_seed(cfg, "reward")):  # seeds.reward, not the run's seed: sweeps share R_φ^0
        _, path = train_reward(cfg, r, tracker or Tracker(), output_dir(cfg) / "reward_train")
    return path


# ============================================================================================ stage=score


def _model_id(path: str | Path) -> dict[str, Any]:
    """Identify an R_φ export cheaply (path + size/mtime of its weight files), for resume checks."""
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json", ".bin"))
    return {"path": str(path), "files": {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files}}


def score_dataset(ds: datasets.Dataset, scorer, output: str | Path, chunk_size: int = 512, batch_size: int = 32,
                  response_key: str = "response", progress: bool = True,
                  model_id: Mapping[str, Any] | None = None) -> datasets.Dataset:
    """Score every row of ``ds`` and save ``ds`` + a ``score`` column to ``output`` (atomically).

    Rows are scored ``chunk_size`` at a time; each chunk's scores are saved atomically to
    ``<output>.chunks/chunk-NNNNN.json`` and a rerun with the same input, model and chunking skips the
    chunks already there (a different input or model discards them). Each row's ``provenance`` JSON gains
    ``{"reward": {"score": s, "model": path}}``. An existing output with the same meta is returned as is.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    chunks_dir = output.with_name(output.name + ".chunks")
    model_id = dict(model_id or {"path": scorer.path})
    meta = {"input": ds._fingerprint, "n": len(ds), "model": model_id, "chunk_size": int(chunk_size),
            "response_key": response_key, "instruction": scorer.instruction}
    if (output / SCORE_META).exists() and json.loads((output / SCORE_META).read_text()).get("meta") == meta:
        log.info("already scored: %s", output)
        return datasets.load_from_disk(str(output))
    if chunks_dir.exists():
        old = json.loads((chunks_dir / "meta.json").read_text()) if (chunks_dir / "meta.json").exists() else None
        if old != meta:
            log.warning("discarding stale score chunks in %s (different input, model or chunking)", chunks_dir)
            shutil.rmtree(chunks_dir)
    chunks_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(chunks_dir / "meta.json", meta)

    n = len(ds)
    starts = list(range(0, n, chunk_size))
    done = {s for s in starts if (chunks_dir / f"chunk-{s // chunk_size:05d}.json").exists()}
    n_done = sum(min(chunk_size, n - s) for s in done)
    bar = tqdm(total=n, initial=n_done, desc="R_phi scoring", unit="row", disable=not progress)
    try:
        for s in starts:
            if s in done:
                continue
            part = ds.select(range(s, min(n, s + chunk_size)))
            scores = scorer.score(part, batch_size=batch_size, response_key=response_key)
            atomic_write_json(chunks_dir / f"chunk-{s // chunk_size:05d}.json",
                              {"start": s, "end": s + len(part), "scores": scores})
            bar.update(len(part))
    finally:
        bar.close()
    all_scores: list[float] = []
    for s in starts:
        chunk = json.loads((chunks_dir / f"chunk-{s // chunk_size:05d}.json").read_text())
        if chunk["start"] != s or len(chunk["scores"]) != min(chunk_size, n - s):
            raise RuntimeError(f"corrupt score chunk {s} in {chunks_dir}: delete the folder and rerun")
        all_scores.extend(float(x) for x in chunk["scores"])

    columns = [c for c in ds.column_names if c != "score"]
    out = ds.remove_columns(["score"]) if "score" in ds.column_names else ds
    if "provenance" in columns:
        provs = []
        for prov, score in zip(out["provenance"], all_scores, strict=True):
            p = json.loads(prov or "{}")
            p["reward"] = {"score": score, "model": model_id.get("path")}
            provs.append(json.dumps(p, sort_keys=True))
        out = out.remove_columns(["provenance"]).add_column("provenance", provs)
    out = out.add_column("score", all_scores).cast_column("score", datasets.Value("float32"))
    out = out.select_columns([*columns, "score"])  # keep the input's column order, score last
    with atomic_dir(output) as tmp:
        out.save_to_disk(str(tmp))
        atomic_write_json(tmp / SCORE_META, {"meta": meta, "n": n,
                                             "mean_score": sum(all_scores) / n if n else math.nan})
    shutil.rmtree(chunks_dir, ignore_errors=True)
    return datasets.load_from_disk(str(output))


def generated_candidates(cfg: DictConfig) -> Path:
    """The exported candidates of ``stage=generate`` run with the settings under ``cfg.stage.generate``."""
    from medgr2.pipeline.common import with_stage
    from medgr2.pipeline.generate import default_candidates_dir, generation_sources, make_generator

    gen = with_stage(cfg, cfg.stage.generate)
    export = default_candidates_dir(gen, generation_sources(gen), make_generator(gen)) / "export" / "candidates"
    if not export.exists():
        raise FileNotFoundError(f"no generated candidates at {export}: run `python train.py stage=generate` with the "
                                "same overrides first, or pass stage.input=<a candidates dataset> "
                                "(stage.source=split scores the benchmark's reference answers)")
    return export


def _score_input(cfg: DictConfig) -> datasets.Dataset:
    s = cfg.stage
    if s.get("input"):
        ds = datasets.load_from_disk(str(s.input))
    elif s.get("source", "split") == "generated" and s.get("generate") is not None:
        ds = datasets.load_from_disk(str(generated_candidates(cfg)))
    else:
        ds = load_split(cfg, str(s.split), limit=s.get("size"))
    if s.get("size") and len(ds) > int(s.size):
        ds = ds.select(range(int(s.size)))
    return ds


def run_score(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    return score_candidates(cfg, tracker)[0]


def score_candidates(cfg: DictConfig, tracker: Tracker) -> tuple[dict[str, float], Path]:
    """Score ``stage.input`` (or the benchmark split) with R_φ; returns (metrics, scored dataset folder)."""
    from medgr2.modules.reward_scorer import RewardScorer

    s = cfg.stage
    model_path = Path(s.model) if s.get("model") else ensure_reward_model(cfg, tracker)
    ds = _score_input(cfg)
    mid = _model_id(model_path)
    default_out = cache_dir(cfg) / "scored" / f"scored-{fingerprint(ds._fingerprint, len(ds), mid, s.response_key)}"
    output = Path(s.output) if s.get("output") else default_out
    scorer = RewardScorer(model_path, batch_size=int(s.batch_size))
    scored = score_dataset(ds, scorer, output, chunk_size=int(s.chunk_size), batch_size=int(s.batch_size),
                           response_key=str(s.response_key), progress=bool(s.get("progress", True)),
                           model_id=mid)
    scores = scored["score"]
    n = len(scores)
    mean = sum(scores) / n if n else math.nan
    metrics = {"score/n": float(n), "score/mean": mean}
    tau = s.get("tau")
    if tau is not None and n:
        metrics["score/above_tau"] = sum(x > float(tau) for x in scores) / n
    tracker.log_metrics(metrics)
    tracker.set_tags({"score.output": str(output), "score.model": str(model_path)})
    print(f"scored {n} rows (mean {mean:.3f}) with {model_path} -> {output}")
    return metrics, output


__all__ = ["GRADES", "build_grade_dataset", "ensure_reward_model", "graded_dataset_path", "reward_key",
           "reward_model_path", "run_grade", "run_reward", "run_score", "score_dataset", "split_by_source",
           "wrong_letter_probes", "wrong_letter_rows"]
