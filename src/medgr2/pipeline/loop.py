"""``stage=loop``: MedGR2's closed loop (paper Algorithm 1), the default of ``python train.py``.

For ``t`` in ``range(stage.iterations)``: generate candidates from new source images (G_θ) → score them with
R_φ^t → select (the ``select`` group: τ, TopK, RandK or all; overlap with D_gen removed unless
``allow_overlap``) → D_gen ← D_gen ∪ D_high → SFT (from the previous policy) → GRPO with R_φ^t → grade the
policy's own answers and adapt R_φ^{t+1} from R_φ^t → optionally distil the generator.

Every step runs the single stage's own code (``stage=generate|score|select|sft|grpo|reward``) on a config
derived from ``stage.<step>``, so a step of the loop and the stage run alone are the same thing. Upstream
products stay in the shared cache under keys of what made them (the pool, its scores, R_φ^0, a selection),
so the jobs of a sweep reuse them. The loop's own work lives in :func:`loop_dir`; a state file there records
each finished step with its outputs and metrics, and a rerun of the same command skips those steps and
resumes SFT/GRPO from their last checkpoint. MLflow: the job's run (tags ``policy``, ``select_method``,
``k``, ``source``, ``grpo``; final ``test/*`` metrics and ``predictions.jsonl``), one nested run per
iteration, and one nested run per executed step below it.

This file orchestrates; the loop's identity and state are in :mod:`~medgr2.pipeline.loop_state`, R_φ's
adaptation in :mod:`~medgr2.pipeline.adapt`, what it prints in :mod:`~medgr2.pipeline.loop_table`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig, OmegaConf, open_dict

from medgr2.configs import check_stage
from medgr2.configs.training import LoopConfig
from medgr2.data.schema import FEATURES, FIELDS, canonical_modality, canonical_question_type
from medgr2.pipeline.adapt import adapt_reward
from medgr2.pipeline.common import load_split, sub_config, to_dict
from medgr2.pipeline.loop_state import LoopState, loop_dir, loop_key
from medgr2.pipeline.loop_table import baselines, duration, policy_label, results_table
from medgr2.pipeline.stage import child_run
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

def source_filter(cfg: DictConfig) -> dict[str, list[str]]:
    """``source=`` / ``source_axis=`` as a row filter (cross-modality / cross-task training), validated."""
    source = cfg.get("source")
    if source in (None, ""):
        return {}
    axis = str(cfg.get("source_axis") or "modality")
    values = [str(v) for v in (to_dict(source) if OmegaConf.is_list(source) else [source])]
    if axis == "modality":
        return {"modality": [canonical_modality(v) for v in values]}
    if axis == "question_type":
        return {"question_type": [canonical_question_type(v) for v in values]}
    raise ValueError(f"source_axis={axis!r}: choose modality or question_type")


# ============================================================================================ helpers


def last_checkpoint(out: Path) -> str | None:
    """The resume point an interrupted training left in ``<out>/checkpoints``, else None: ``last.ckpt``, or the
    newest ``step<N>.ckpt`` when the run was killed after writing that but before copying it to ``last.ckpt``."""
    folder = out / "checkpoints"
    ckpt = folder / "last.ckpt"
    if not ckpt.exists():
        steps = [(int(m.group(1)), f) for f in folder.glob("step*.ckpt") if (m := re.fullmatch(r"step(\d+)\.ckpt", f.name))]
        if not steps:
            return None
        ckpt = max(steps)[1]
    log.info("loop: resuming %s from its checkpoint %s", out.name, ckpt)
    return str(ckpt)


def as_vqa(ds: datasets.Dataset) -> datasets.Dataset:
    """Only the canonical VQA columns, with the canonical features (candidates carry extra columns and
    undecoded images)."""
    return ds.select_columns(list(FIELDS)).cast(FEATURES)


def union_dataset(parts: Sequence[str | Path], out: Path) -> datasets.Dataset:
    """D_gen: the VQA rows of every part, concatenated and saved atomically to ``out``."""
    sets = [as_vqa(datasets.load_from_disk(str(p))) for p in parts]
    sets = [s for s in sets if len(s)]
    if not sets:
        raise ValueError(f"D_gen is empty: nothing selected from {list(map(str, parts))} and no D_seed "
                         "(lower tau, raise k, or set stage.seed_size)")
    ds = datasets.concatenate_datasets(sets)
    with atomic_dir(out) as tmp:
        ds.save_to_disk(str(tmp))
    return datasets.load_from_disk(str(out))


def seed_records(cfg: DictConfig, n: int, where: Mapping[str, Any]) -> datasets.Dataset:
    """D_seed: the last ``n`` records of the train split (after the source filter)."""
    from medgr2.pipeline.generate import filter_rows

    train = filter_rows(load_split(cfg, "train"), where)
    return train.select(range(max(0, len(train) - n), len(train)))


def check_budget(cfg: DictConfig, where: Mapping[str, Any]) -> None:
    """Generation sources of all iterations and D_seed must fit in the train split without overlapping."""
    from medgr2.pipeline.generate import filter_rows

    s = cfg.stage
    n_train = len(filter_rows(load_split(cfg, "train"), where))
    need = int(s.iterations) * int(s.generate.n_sources) + int(s.seed_size)
    if need > n_train:
        raise ValueError(
            f"stage=loop needs {s.iterations} x {s.generate.n_sources} source images + {s.seed_size} seed records "
            f"= {need}, but the train split{' (filtered by ' + str(where) + ')' if where else ''} has {n_train}: "
            "lower stage.generate.n_sources / stage.seed_size / stage.iterations (or raise data.n_train)")


# ============================================================================================ the loop


class Loop:
    """One run of Algorithm 1 over ``cfg`` (see the module docstring)."""

    def __init__(self, cfg: DictConfig, tracker: Tracker):
        self.cfg, self.tracker, self.s = cfg, tracker, cfg.stage
        self.where = source_filter(cfg)
        # The loop's own keys and every step's stage settings, validated before any work (a typo in stage.sft
        # would otherwise fail only after generation and scoring).
        check_stage("loop", to_dict(cfg.stage))
        self.c = LoopConfig.from_node(to_dict(cfg.stage))
        self.dir = loop_dir(cfg)
        self.state = LoopState(self.dir, loop_key(cfg))

    # ---------------------------------------------------------------- step bookkeeping
    def step(self, name: str, itr: Tracker, fn: Callable[[Tracker], tuple[Mapping[str, float], dict[str, Any]]],
             tags: Mapping[str, str] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
        """Run ``fn`` in a nested MLflow run unless the state says ``name`` is done; log its metrics to the
        iteration run under ``<step>/`` either way."""
        done = self.state.get(name)
        if done is not None:
            log.info("loop: %s already done, skipping", name)
            metrics, outputs = done["metrics"], done["outputs"]
        else:
            start = time.monotonic()
            with child_run(itr, name.split("/", 1)[1], tags) as child:
                metrics, outputs = fn(child)
            metrics = {k: float(v) for k, v in metrics.items()}
            self.state.record(name, outputs, metrics)
            log.info("loop: %s done in %s", name, duration(time.monotonic() - start))
        short = name.split("/", 1)[1]
        itr.log_metrics({f"{short}/{k}": v for k, v in metrics.items()})
        return dict(metrics), dict(outputs)

    # ---------------------------------------------------------------- R_φ^0 and D_seed
    def initial_reward_model(self) -> str:
        from medgr2.pipeline.reward import ensure_reward_model

        if self.c.reward_model:
            given = Path(str(self.c.reward_model))
            if not given.is_dir():
                raise FileNotFoundError(f"stage.reward_model={given} is not an R_φ export folder (stage=reward output)")
            return str(given)

        def run(tr: Tracker):
            sub = sub_config(self.cfg, "reward", self.dir / "reward0")
            return {}, {"reward_model": str(ensure_reward_model(sub, tr))}

        return self.step("setup/reward0", self.tracker, run)[1]["reward_model"]

    def seed_set(self) -> str | None:
        n = int(self.c.seed_size)
        if n <= 0:
            return None

        def run(tr: Tracker):
            out = self.dir / "seed"
            ds = seed_records(self.cfg, n, self.where)
            with atomic_dir(out) as tmp:
                as_vqa(ds).save_to_disk(str(tmp))
            return {"seed_rows": float(len(ds))}, {"seed": str(out)}

        return self.step("setup/seed", self.tracker, run)[1]["seed"]

    # ---------------------------------------------------------------- one iteration
    def iteration(self, t: int, rm_path: str, d_gen: list[str], policy: str | None,
                  gen_weights: str | None) -> dict[str, Any]:
        from medgr2.pipeline.generate import generate_candidates
        from medgr2.pipeline.grpo import train_grpo
        from medgr2.pipeline.score import score_candidates
        from medgr2.pipeline.select import select_candidates
        from medgr2.pipeline.sft import train_sft

        cfg, s, c, it_dir = self.cfg, self.s, self.c, self.dir / f"iter{t}"
        summary: dict[str, float] = {}
        with child_run(self.tracker, f"iter{t}", {"stage": "loop_iteration", "iteration": str(t)}) as itr:
            def generate(tr: Tracker):
                sub = sub_config(cfg, "generate", it_dir / "generate", iteration=t, where=self.where or None,
                                 source_offset=t * int(s.generate.n_sources))
                if gen_weights:
                    with open_dict(sub):
                        sub.generator.weights = gen_weights
                m, out, export = generate_candidates(sub, tr)
                if export is None:
                    raise RuntimeError(f"iteration {t}: generation in {out} is incomplete (pending requests): "
                                       "rerun the same command to retry them")
                return m, {"candidates": str(export), "generation": str(out)}

            m, o = self.step(f"iter{t}/generate", itr, generate)
            summary.update({k: v for k, v in m.items() if k == "generate/kept"})

            def score(tr: Tracker):
                sub = sub_config(cfg, "score", it_dir / "score", input=o["candidates"], model=rm_path)
                m, out = score_candidates(sub, tr)
                return m, {"scored": str(out)}

            scored = self.step(f"iter{t}/score", itr, score)[1]["scored"]

            def select(tr: Tracker):
                node = {"name": "select", "pool": scored, "existing": list(d_gen), "out_dir": None,
                        "batch_size": 8192}
                m, out = select_candidates(sub_config(cfg, node, it_dir / "select"), tr)
                return m, {"selected": str(out)}

            m, o = self.step(f"iter{t}/select", itr, select)
            summary.update({k: v for k, v in m.items() if k == "select/n_selected"})
            d_gen = [*d_gen, o["selected"]]

            def union(tr: Tracker):
                ds = union_dataset(d_gen, it_dir / "train_data")
                return {"train_rows": float(len(ds))}, {"train_data": str(it_dir / "train_data")}

            m, o = self.step(f"iter{t}/union", itr, union)
            train_data = o["train_data"]
            summary.update(m)

            grpo_on = bool(c.grpo_enabled)

            def sft(tr: Tracker):
                out = it_dir / "sft"
                sub = sub_config(cfg, "sft", out, train_data=train_data, init=policy, ckpt_path=last_checkpoint(out),
                                 evaluate=bool(c.eval_after_sft) or not grpo_on)
                m, pdir = train_sft(sub, tr)
                return m, {"policy": str(pdir), "predictions": str(out / "predictions.jsonl")}

            m, o = self.step(f"iter{t}/sft", itr, sft)
            policy, predictions = o["policy"], o["predictions"]
            summary.update({f"sft/{k}": v for k, v in m.items() if k.startswith("test/")})
            final = {k: v for k, v in m.items() if k.startswith("test/")}

            if grpo_on:
                def grpo(tr: Tracker):
                    out = it_dir / "grpo"
                    # d_gen: Algorithm 1's prompts; train: the benchmark's labelled train questions (GRPO needs
                    # only the answer letter, not a rationale)
                    prompts = train_data if self.c.grpo_prompts == "d_gen" else None
                    sub = sub_config(cfg, "grpo", out, train_data=prompts, init=policy, reward_model=rm_path,
                                     ckpt_path=last_checkpoint(out), evaluate=True)
                    m, pdir = train_grpo(sub, tr)
                    return m, {"policy": str(pdir), "predictions": str(out / "predictions.jsonl")}

                m, o = self.step(f"iter{t}/grpo", itr, grpo)
                policy, predictions = o["policy"], o["predictions"]
                final = {k: v for k, v in m.items() if k.startswith("test/")}
            summary.update(final)

            if bool(c.adapt_reward) and t + 1 < int(c.iterations):
                def adapt(tr: Tracker):
                    m, new_rm = adapt_reward(cfg, t, tr, policy, rm_path, it_dir / "adapt", self.where)
                    return m, {"reward_model": str(new_rm)}

                m, o = self.step(f"iter{t}/adapt", itr, adapt)
                rm_path = o["reward_model"]
                summary.update({f"adapt/{k}": v for k, v in m.items()})

            if bool(c.distill):
                def distill(tr: Tracker):
                    from medgr2.pipeline.generate import distill_generator

                    node = {**to_dict(s.distill_settings), "out_dir": str(it_dir / "generator")}
                    sub = sub_config(cfg, node, it_dir / "distill")
                    out = distill_generator(sub, tr, datasets.load_from_disk(d_gen[-1]))
                    return {}, {"generator": str(out)}

                o = self.step(f"iter{t}/distill", itr, distill)[1]
                if cfg.generator.get("name") == "hf":
                    gen_weights = o["generator"]
                else:
                    log.warning("stage.distill: the %s generator cannot load distilled weights; the export %s is "
                                "kept (use generator=hf to generate with it)", cfg.generator.name, o["generator"])
        return {"summary": summary, "final": final, "policy": policy, "predictions": predictions, "rm": rm_path,
                "d_gen": d_gen, "gen_weights": gen_weights}

    # ---------------------------------------------------------------- all of it
    def run(self) -> dict[str, float]:
        cfg, c = self.cfg, self.c
        check_budget(cfg, self.where)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.dir / "config.json", _public_config(cfg))
        from medgr2.pipeline.select import selection_settings

        sel = selection_settings(cfg)
        tags = {"policy": policy_label(cfg, sel), "select_method": str(sel["method"]),
                "grpo": str(bool(c.grpo_enabled)).lower(), "iterations": str(int(c.iterations)),
                "loop_dir": str(self.dir)}
        if sel.get("k") is not None and sel["method"] in ("topk", "randk"):
            tags["k"] = str(int(sel["k"]))
        if sel["method"] == "threshold":
            tags["tau"] = str(sel["tau"])
        if self.where:
            tags.update(source=",".join(next(iter(self.where.values()))), source_axis=next(iter(self.where)))
        self.tracker.set_tags(tags)
        print(f"MedGR2 loop: {c.iterations} iteration(s) in {self.dir}")

        rm_path = self.initial_reward_model()
        seed = self.seed_set()
        d_gen: list[str] = [seed] if seed else []
        policy: str | None = None
        gen_weights = cfg.generator.get("weights") if cfg.generator.get("name") == "hf" else None
        rows, final, predictions = [], {}, None
        for t in range(int(c.iterations)):
            res = self.iteration(t, rm_path, d_gen, policy, gen_weights)
            rm_path, d_gen, policy, gen_weights = res["rm"], res["d_gen"], res["policy"], res["gen_weights"]
            final, predictions = res["final"], res["predictions"]
            rows.append(res["summary"])
            self.tracker.log_metrics({f"loop/{k}": v for k, v in res["summary"].items()}, step=t)
            # The table so far after every iteration: the first result is on screen after iteration 0.
            print(results_table(rows, baselines(final)), flush=True)
        metrics = dict(final)
        metrics.update({k: v for k, v in rows[-1].items() if k.startswith("sft/test/")})
        self.tracker.log_metrics(metrics)
        if predictions and Path(predictions).exists():
            self.tracker.log_artifact(predictions)
        self.tracker.set_tags({"policy_dir": str(policy), "reward_model": str(rm_path)})
        print(f"final policy: {policy}\nR_φ: {rm_path}")
        return metrics


def _public_config(cfg: DictConfig) -> dict[str, Any]:
    from medgr2.utils.redact import redact

    return redact({str(k): to_dict(cfg[k]) for k in cfg if k != "paths"})


def run_loop(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """``stage=loop``: Algorithm 1 (see the module docstring)."""
    return Loop(cfg, tracker).run()


__all__ = ["Loop", "as_vqa", "check_budget", "last_checkpoint", "run_loop", "seed_records", "source_filter",
           "union_dataset"]
