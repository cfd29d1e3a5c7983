"""A small real MLflow SQLite store following the report contract (used by test_report and test_notebook).

Every number is hand-chosen so the tests can compare report outputs with what was logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

T0 = 1_700_000_000_000  # ms; run i starts at T0 + i minutes, so "latest" is well defined

# Predictions of the baseline (sft_raw) and compared (grpo) runs. Transitions per modality, by hand:
#   CT:    q1 C->C, q2 W->C, q3 W->W (baseline unparseable)      -> cc 1, wc 1, cw 0, ww 1
#   MRI:   q4 C->W, q5 W->C                                       -> cc 0, wc 1, cw 1, ww 0
#   X-Ray: q6 C->C, q7 C->C, q8 W->C                              -> cc 2, wc 1, cw 0, ww 0
#   q9 only in the compared file (no partner: left out).
_ITEMS = [  # id, modality, question type, gold, n_options, baseline pred, compared pred
    ("q1", "CT", "Modality Recognition", "A", 4, "A", "A"),
    ("q2", "CT", "Disease Diagnosis", "B", 4, "C", "B"),
    ("q3", "CT", "Disease Diagnosis", "A", 2, None, "B"),
    ("q4", "MRI", "Modality Recognition", "B", 2, "B", "A"),
    ("q5", "MRI", "Disease Diagnosis", "C", 4, "A", "C"),
    ("q6", "X-Ray", "Modality Recognition", "D", 4, "D", "D"),
    ("q7", "X-Ray", "Disease Diagnosis", "A", 4, "A", "A"),
    ("q8", "X-Ray", "Disease Diagnosis", "C", 4, "B", "C"),
]
EXPECTED_TRANSITIONS = {
    "CT": {"n": 3, "correct_to_correct": 1, "wrong_to_correct": 1, "correct_to_wrong": 0, "wrong_to_wrong": 1},
    "MRI": {"n": 2, "correct_to_correct": 0, "wrong_to_correct": 1, "correct_to_wrong": 1, "wrong_to_wrong": 0},
    "X-Ray": {"n": 3, "correct_to_correct": 2, "wrong_to_correct": 1, "correct_to_wrong": 0, "wrong_to_wrong": 0},
    "All": {"n": 8, "correct_to_correct": 3, "wrong_to_correct": 3, "correct_to_wrong": 1, "wrong_to_wrong": 1},
}
# Chance per modality from the compared run's n_options (the newest predictions file; q9 included):
# CT mean(1/4, 1/4, 1/2, 1/4), MRI mean(1/2, 1/4), X-Ray 1/4.
EXPECTED_CHANCE = {"CT": 0.3125, "MRI": 0.375, "X-Ray": 0.25}


def predictions(which: str) -> list[dict]:
    col = 5 if which == "baseline" else 6
    rows = [{"id": it[0], "modality": it[1], "question_type": it[2], "gold": it[3], "n_options": it[4],
             "pred": it[col]} for it in _ITEMS]
    if which == "compare":
        rows.append({"id": "q9", "modality": "CT", "question_type": "Disease Diagnosis", "gold": "A",
                     "n_options": 4, "pred": "A"})
    return rows


def _acc(overall: float, ct: float, mri: float, xray: float, **extra: float) -> dict[str, float]:
    return {"test/acc": overall, "test/acc/modality/CT": ct, "test/acc/modality/MRI": mri,
            "test/acc/modality/X-Ray": xray, "test/chance": 0.3125, "test/majority": 0.375,
            "test/parse_rate": 0.96875, **extra}


@dataclass
class Store:
    uri: str
    root: Path
    ids: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)


def build_store(root: Path) -> Store:
    """Log the fixture runs into ``root/mlflow.db`` (artifacts under ``root/mlruns``)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    store = Store(uri=f"sqlite:///{root / 'mlflow.db'}", root=root)
    client = MlflowClient(store.uri)
    exp_id = client.create_experiment("medgr2", artifact_location=str(root / "mlruns"))
    n = 0

    def log(name: str, experiment: str, stage: str, metrics: dict[str, float], status: str = "FINISHED",
            preds: str | None = None, **tags: str) -> str:
        nonlocal n
        n += 1
        all_tags = {"experiment": experiment, "stage": stage, "data": "synthmed", "model": "tiny_vlm", **tags}
        run = client.create_run(exp_id, start_time=T0 + 60_000 * n, tags=all_tags, run_name=name)
        rid = run.info.run_id
        if metrics:
            client.log_batch(rid, metrics=[Metric(k, v, T0 + 60_000 * n, 0) for k, v in metrics.items()])
        if preds:
            path = root / f"{name}-predictions" / "predictions.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(p) + "\n" for p in predictions(preds)), encoding="utf-8")
            client.log_artifact(rid, str(path))
        client.set_terminated(rid, status=status)
        store.ids[name], store.metrics[name], store.names[rid] = rid, metrics, name
        return rid

    log("zero-shot", "zero_shot", "evaluate",
        _acc(0.3125, 0.25, 0.375, 0.3, **{"test/f1": 0.21875, "test/auc": 0.5625}))
    log("sft-raw-old", "sft_raw", "sft", _acc(0.109375, 0.1, 0.1, 0.1, **{"test/f1": 0.1, "test/auc": 0.5}))
    log("sft-raw", "sft_raw", "sft", _acc(0.5, 0.5625, 0.4375, 0.5, **{"test/f1": 0.46875, "test/auc": 0.65625}),
        preds="baseline")
    log("sft-rewarded", "sft_rewarded", "sft",
        _acc(0.5625, 0.625, 0.5, 0.5625, **{"test/f1": 0.53125, "test/auc": 0.6875}))
    grpo = log("grpo", "grpo", "grpo", _acc(0.625, 0.6875, 0.5625, 0.625, **{"test/f1": 0.59375}),
               preds="compare", policy="MedGR2 (SFT+GRPO)")
    for exp, accs in (("randk", (0.40625, 0.4375)), ("topk", (0.53125, 0.578125)), ("topk_grpo", (0.5625, 0.59375))):
        for k, a in zip((1000, 2000), accs, strict=True):
            log(f"{exp}-{k}", exp, "grpo" if exp == "topk_grpo" else "sft", _acc(a, a, a, a),
                k=str(k), select_method="randk" if exp == "randk" else "topk")
    log("randk-no-k", "randk", "sft", _acc(0.34375, 0.3, 0.3, 0.3), select_method="randk")
    log("rand-all", "rand_all", "sft", _acc(0.515625, 0.5, 0.5, 0.5), select_method="all", k="4000")
    for src, ct, mri in (("CT", 0.8125, 0.40625), ("MRI", 0.28125, 0.90625)):
        log(f"xmod-{src}", "cross_modality", "sft", _acc(0.5, ct, mri, 0.5), source=src, source_axis="modality")
    for src, dd, mr in (("Disease_Diagnosis", 0.71875, 0.46875), ("Modality Recognition", 0.34375, 0.84375)):
        log(f"xtask-{src}", "cross_task", "sft",
            {"test/acc": 0.5, "test/chance": 0.3125, "test/acc/qtype/Disease_Diagnosis": dd,
             "test/acc/qtype/Modality_Recognition": mr}, source=src, source_axis="question_type")
    # Must not count: a loop's child run, a FAILED run; must be listed as skipped: a run without test/acc.
    log("child-of-grpo", "topk", "sft", _acc(0.96875, 0.9, 0.9, 0.9), k="1000", **{"mlflow.parentRunId": grpo})
    log("failed-rewarded", "sft_rewarded", "sft", _acc(0.90625, 0.9, 0.9, 0.9), status="FAILED")
    log("think-without-eval", "sft_think", "sft", {"train/loss": 1.25})
    log("generate-pool", "default", "generate", {})
    return store


_BUILT: dict[str, Any] = {}


@pytest.fixture(scope="session")
def report_store(tmp_path_factory) -> Store:
    """The fixture store, built once per test session (read-only for the tests; shared across modules)."""
    if "store" not in _BUILT:
        _BUILT["store"] = build_store(tmp_path_factory.mktemp("report_store"))
    return _BUILT["store"]


# ------------------------------------------------------------------------------------------------------------
# A multi-seed store: every arm on the same N_Q questions, per-question correctness drawn from a fixed seed.

N_Q = 200
# arm -> (recipe, stage, tags, accuracy per seed); the per-question draws make the logged test/acc exact.
SEED_ARMS: dict[str, tuple[str, str, dict[str, str], dict[int, float]]] = {
    "randk-1000": ("randk", "loop", {"k": "1000"}, {0: 0.55, 1: 0.52, 2: 0.57}),
    "topk-1000": ("topk", "loop", {"k": "1000"}, {0: 0.74, 1: 0.77, 2: 0.72}),
    "randk-2000": ("randk", "loop", {"k": "2000"}, {0: 0.70, 1: 0.68, 2: 0.71}),
    "topk-2000": ("topk", "loop", {"k": "2000"}, {0: 0.80, 1: 0.78, 2: 0.81}),
    "topk_grpo-1000": ("topk_grpo", "loop", {"k": "1000"}, {0: 0.84, 1: 0.86, 2: 0.83}),
    "topk_grpo-2000": ("topk_grpo", "loop", {"k": "2000"}, {0: 0.80, 1: 0.79, 2: 0.81}),
    "rand-all": ("rand_all", "loop", {}, {0: 0.79, 1: 0.80, 2: 0.78}),
    "sft-raw": ("sft_raw", "sft", {}, {0: 0.45}),
    "sft-rewarded": ("sft_rewarded", "sft", {}, {0: 0.78, 1: 0.80}),
    "grpo": ("grpo", "loop", {}, {0: 0.80, 1: 0.81}),
    "zero-shot": ("zero_shot", "evaluate", {}, {0: 0.30}),
    "xmod-CT": ("cross_modality", "loop", {"source": "CT", "source_axis": "modality"}, {0: 0.60, 1: 0.62}),
    "xmod-MRI": ("cross_modality", "loop", {"source": "MRI", "source_axis": "modality"}, {0: 0.58, 1: 0.61}),
}
LOOP_ACC = {0: (0.70, 0.78), 1: (0.72, 0.80)}  # seed -> (iteration 0, iteration 1)


def seed_correctness(arm: str, seed: int, acc: float) -> list[int]:
    """Exactly round(acc * N_Q) correct questions, placed by a fixed-seed permutation per (arm, seed)."""
    import zlib

    import numpy as np

    rng = np.random.default_rng(zlib.crc32(f"{arm}:{seed}".encode()))
    correct = np.zeros(N_Q, dtype=int)
    correct[rng.permutation(N_Q)[: round(acc * N_Q)]] = 1
    return correct.tolist()


def seed_predictions(correct: list[int]) -> list[dict]:
    return [{"id": f"q{j:03d}", "modality": "CT" if j % 2 == 0 else "MRI", "question_type": "Disease Diagnosis",
             "gold": "A", "n_options": 2, "pred": "A" if c else "B"} for j, c in enumerate(correct)]


@dataclass
class SeedStore:
    uri: str
    ids: dict[tuple[str, int], str] = field(default_factory=dict)
    correct: dict[tuple[str, int], list[int]] = field(default_factory=dict)


def build_seed_store(root: Path) -> SeedStore:
    """Log :data:`SEED_ARMS` (one run per seed, with predictions) and a 2-iteration loop with nested runs."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    store = SeedStore(uri=f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient(store.uri)
    exp_id = client.create_experiment("medgr2", artifact_location=str(root / "mlruns"))
    n = 0

    def log(name: str, recipe: str, stage: str, seed: int, correct: list[int] | None, tags: dict[str, str],
            parent: str | None = None) -> str:
        nonlocal n
        n += 1
        sweep = " ".join(f"{k}={v}" for k, v in tags.items() if k in ("k", "source"))
        all_tags = {"experiment": recipe, "stage": stage, "data": "synthmed", "model": "tiny_vlm",
                    "seed": str(seed), "sweep": sweep, **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        rid = client.create_run(exp_id, start_time=T0 + 60_000 * n, tags=all_tags,
                                run_name=f"{name} seed={seed}").info.run_id
        if correct is not None:
            per_mod = {f"test/acc/modality/{m}": sum(correct[j] for j in range(i, N_Q, 2)) / (N_Q // 2)
                       for i, m in enumerate(("CT", "MRI"))}  # even ids are CT, odd MRI (seed_predictions)
            ms = {"test/acc": sum(correct) / N_Q, "test/chance": 0.5, **per_mod}
            client.log_batch(rid, metrics=[Metric(k, v, T0 + 60_000 * n, 0) for k, v in ms.items()])
            path = root / f"{rid}-predictions" / "predictions.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(p) + "\n" for p in seed_predictions(correct)), encoding="utf-8")
            client.log_artifact(rid, str(path))
        client.set_terminated(rid, status="FINISHED")
        return rid

    for arm, (recipe, stage, tags, accs) in SEED_ARMS.items():
        for seed, acc in accs.items():
            c = seed_correctness(arm, seed, acc)
            store.ids[(arm, seed)] = log(arm, recipe, stage, seed, c, tags)
            store.correct[(arm, seed)] = c
    for seed, (a0, a1) in LOOP_ACC.items():
        c0, c1 = seed_correctness("loop-it0", seed, a0), seed_correctness("loop-it1", seed, a1)
        top = log("loop", "default", "loop", seed, c1, {"iterations": "2"})
        it0 = log("iter0", "default", "loop_iteration", seed, None, {"iteration": "0"}, parent=top)
        log("grpo", "default", "grpo", seed, c0, {}, parent=it0)
        store.ids[("loop", seed)] = top
        store.correct[("loop-it0", seed)], store.correct[("loop", seed)] = c0, c1
    return store


@pytest.fixture(scope="session")
def seed_store(tmp_path_factory) -> SeedStore:
    """The multi-seed store, built once per test session."""
    if "seeds" not in _BUILT:
        _BUILT["seeds"] = build_seed_store(tmp_path_factory.mktemp("seed_store"))
    return _BUILT["seeds"]
