"""``stage=grade`` (paper §3, "Multi-Grade Supervision"): D_grade — four graded responses per reference record
(:func:`medgr2.data.grading.build_graded`), saved as a ``datasets`` folder at :func:`output_path`
(``<cache>/grade/dgrade-<key>``, keyed by the source and the grading config), optionally with wrong-letter
hard negatives (``stage.wrong_letter_rate``) and image-grounding negatives (``stage.image_negative_rate``). The reward stage builds it through :func:`build_grade_dataset`
when it is missing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig, OmegaConf

from medgr2.data.grade_config import GradeConfig
from medgr2.data.grade_transforms import image_swap_rows, wrong_letter_rows
from medgr2.data.grading import GRADED_FEATURES, build_graded
from medgr2.data.schema import to_dataset
from medgr2.pipeline.common import cache_dir, fingerprint, load_split, to_dict
from medgr2.pipeline.stage import Artifact
from medgr2.pipeline.tracking import Tracker

log = logging.getLogger(__name__)

GRADE_META = "grading_meta.json"
#: Extra rows beyond the paper's four grades: stage key -> (row maker, grade name). A key at 0 leaves D_grade
#: (and every cache key built on it) as it was before the key existed.
EXTRA_ROWS = {"wrong_letter_rate": (wrong_letter_rows, "wrong_letter"),
              "image_negative_rate": (image_swap_rows, "image_swap")}


def extra_rates(g: DictConfig | Mapping[str, Any]) -> dict[str, float]:
    """The non-zero extra-row rates of a grade node (``{"wrong_letter_rate": 0.25}``; ``{}``: the paper's D_grade)."""
    return {k: float(g.get(k) or 0.0) for k in EXTRA_ROWS if float(g.get(k) or 0.0) > 0}


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


def grade_key(cfg: DictConfig, g: DictConfig | None = None) -> str:
    """Cache key of D_grade for these settings (``g``: a node with ``source`` and ``grading``; default
    ``cfg.stage``): the source records, the grading config and the non-zero extra-row rates."""
    g = g if g is not None else cfg.stage
    src = g.source
    if src.get("path"):
        ds = datasets.load_from_disk(str(src.path))
        key = fingerprint("path", str(Path(src.path).resolve()), ds._fingerprint, src.get("size"))
    else:
        key = fingerprint("split", cfg.data, str(src.split), src.get("size"))
    extra = extra_rates(g)
    parts = (key, g.grading) if not extra else (key, g.grading, extra)
    return fingerprint(*parts)


def output_path(cfg: DictConfig, g: DictConfig | None = None) -> Path:
    """Where D_grade for these settings lives (``<cache>/grade/dgrade-<key>``, :func:`grade_key`). The folder
    may not exist yet."""
    return cache_dir(cfg) / "grade" / f"dgrade-{grade_key(cfg, g)}"


def _saved_dataset(folder: Path) -> bool:
    # A D_grade folder from before the artifact meta: its meta has no key, the saved dataset is complete
    # (it was written atomically).
    return (folder / "dataset_info.json").exists()


def grade_artifact(cfg: DictConfig, g: DictConfig | None = None) -> Artifact:
    """D_grade of these settings as a cached product (meta :data:`GRADE_META`, key :func:`grade_key`)."""
    key = grade_key(cfg, g)
    return Artifact(cache_dir(cfg) / "grade" / f"dgrade-{key}", key, GRADE_META, ready=_saved_dataset)


def build_grade_dataset(cfg: DictConfig, g: DictConfig | None = None,
                        tracker: Tracker | None = None) -> tuple[datasets.Dataset, Path]:
    """D_grade for these settings: loaded from the cache, or built, saved there and returned.

    Logs rows per grade and the skip counts (records without a rationale, rows that could not honestly
    carry their grade…) to the log and, when given, the tracker.
    """
    g = g if g is not None else cfg.stage
    dgrade = grade_artifact(cfg, g)
    path = dgrade.path
    rates = extra_rates(g)

    def with_extra_rows(tmp: Path) -> dict[str, Any]:
        # The paper's four grades (cached on their own: the WordNet pass is the slow part) + the extra rows,
        # each at the irrelevant grade's value.
        plain = OmegaConf.create(to_dict(g))
        for k in EXTRA_ROWS:
            if k in plain:
                plain[k] = 0.0
        base, _ = build_grade_dataset(cfg, plain)
        meta = {k: v for k, v in grade_artifact(cfg, plain).meta().items() if k != "key"}
        gcfg = grade_config(g.grading)
        # Undecoded images: the image-swap rows compare pictures by their stored bytes.
        originals = (base.cast_column("image", datasets.Image(decode=False))
                     .filter(lambda grade: grade == "original", input_columns=["grade"]).to_list())
        extra, counts = [], {}
        for k, rate in rates.items():
            make, grade = EXTRA_ROWS[k]
            rows = make(originals, gcfg.seed, target=gcfg.irrelevant, rate=rate)
            extra += rows
            counts[grade] = len(rows)
        ds = datasets.concatenate_datasets([base, to_dataset(extra, extra_features=GRADED_FEATURES)])
        meta.update(n_rows=len(ds), rows_per_grade={**meta["rows_per_grade"], **counts}, **rates)
        ds.save_to_disk(str(tmp))
        log.info("D_grade + extra rows at the irrelevant grade %s -> %s", counts, path)
        return meta

    def four_grades(tmp: Path) -> dict[str, Any]:
        records = _source_records(cfg, g)
        rows, skipped = build_graded(list(records), grade_config(g.grading))
        if not rows:
            raise ValueError(f"D_grade is empty: no usable record among {len(records)} (skipped: {dict(skipped)})")
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["grade"]] = counts.get(row["grade"], 0) + 1
        to_dataset(rows, extra_features=GRADED_FEATURES).save_to_disk(str(tmp))
        log.info("D_grade: %d rows from %d records -> %s; skipped %s", len(rows), len(records), path,
                 dict(skipped))
        return {"n_records": len(records), "n_rows": len(rows), "rows_per_grade": counts,
                "skipped": dict(skipped), "grading": to_dict(g.grading), "source": to_dict(g.source)}

    if dgrade.meta() is not None:
        log.info("reusing D_grade %s", path)
    meta = dgrade.get_or_build(with_extra_rows if rates else four_grades)
    if tracker is not None and "n_rows" in meta:
        m = {"grade/rows": meta["n_rows"], "grade/records": meta["n_records"]}
        m.update({f"grade/rows/{k}": v for k, v in meta["rows_per_grade"].items()})
        m.update({f"grade/skipped/{k}": v for k, v in meta["skipped"].items()})
        tracker.log_metrics({k: float(v) for k, v in m.items()})
        tracker.set_tags({"dgrade_path": str(path)})
    return datasets.load_from_disk(str(path)), path


def run_grade(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """``stage=grade``: build (or find) D_grade and print its rows per grade and skip counts."""
    ds, path = build_grade_dataset(cfg, cfg.stage, tracker)
    meta = json.loads((path / GRADE_META).read_text())
    print(f"D_grade: {len(ds)} rows {meta['rows_per_grade']} at {path}; skipped {meta['skipped']}")
    return {"grade/rows": float(len(ds))}


__all__ = ["GRADE_META", "build_grade_dataset", "grade_artifact", "grade_config", "grade_key", "output_path",
           "run_grade"]
