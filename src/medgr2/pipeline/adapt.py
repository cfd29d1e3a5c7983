"""R_φ^{t+1} from R_φ^t (paper Algorithm 1 lines 12-13), the closed loop's last step of an iteration.

The policy answers this iteration's source images greedily; each answer becomes a graded row of D_pref by its
letter against the reference (:func:`policy_graded_rows`); R_φ is retrained from its previous export on D_pref
mixed with a replay of D_grade, so it keeps its grade scale and its held-out set (:func:`adapt_reward`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig

from medgr2.configs.training import LoopConfig
from medgr2.data.schema import FIELDS, to_dataset
from medgr2.pipeline.common import instruction, sub_config, to_dict
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_dir


def policy_graded_rows(rows: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]],
                       grading: Mapping[str, Any]) -> list[dict[str, Any]]:
    """D_pref (Algorithm 1 line 12): the policy's completions as graded rows, graded by their answer against
    the reference: correct letter -> ``grading.synonym`` (a valid answer that is not the reference text),
    wrong letter -> ``grading.irrelevant`` (a fluent hallucination), no answer -> ``grading.deletion``."""
    out = []
    for rec, pred in zip(rows, preds, strict=True):
        if pred["pred"] is None:
            grade, target = "policy_unanswered", float(grading["deletion"])
        elif pred["pred"] == rec["answer"]:
            grade, target = "policy_correct", float(grading["synonym"])
        else:
            grade, target = "policy_wrong", float(grading["irrelevant"])
        row = {k: rec[k] for k in FIELDS}
        row.update(id=f"{rec['id']}#{grade}", response=pred["completion"].strip() or "<answer></answer>",
                   target=target, grade=grade, source_id=str(rec["id"]))
        out.append(row)
    return out


def adapt_reward(cfg: DictConfig, t: int, tracker: Tracker, policy: str, rm_path: str, out: Path,
                 where: Mapping[str, Any] | None = None) -> tuple[dict[str, float], Path]:
    """Grade the policy's answers on this iteration's source images (D_pref) and retrain R_φ from its
    previous export on D_pref plus a replay of D_grade (Algorithm 1 lines 12-13). ``cfg`` is the loop's config
    (``stage.adapt``, ``stage.generate``, ``stage.reward``); ``where`` its source filter. Returns the new R_φ's
    metrics and its export folder."""
    from medgr2.data.grading import GRADED_FEATURES
    from medgr2.evaluation.evaluate import predict
    from medgr2.models.factory import load_vlm
    from medgr2.pipeline.generate import generation_sources
    from medgr2.pipeline.grade import build_grade_dataset
    from medgr2.pipeline.reward import train_reward

    s, a = cfg.stage, LoopConfig.from_node(to_dict(cfg.stage)).adapt
    gen_sub = sub_config(cfg, "generate", out, where=where or None,
                         source_offset=t * int(s.generate.n_sources))
    sources = generation_sources(gen_sub).cast_column("image", datasets.Image())
    prompts = sources.shuffle(seed=int(cfg.seed) + t).select(range(min(int(a.samples), len(sources))))
    model, processor = load_vlm(to_dict(cfg.model), weights=policy, lora=False)
    preds = predict(model, processor, prompts, instruction=instruction(cfg),
                    batch_size=int(cfg.evaluate.batch_size), max_new_tokens=int(cfg.evaluate.max_new_tokens),
                    progress=False)
    grading = to_dict(s.reward.grading)
    from medgr2.pipeline.reward_pairs import heldout_ranking_metrics, rollout_preferences

    extra = rollout_preferences(cfg, t, model, processor, prompts, grading)  # stage.adapt.d_pref / heldout
    del model
    rows = extra["rows"] or policy_graded_rows(prompts, preds, grading)
    pref = to_dataset(rows, extra_features=GRADED_FEATURES)
    r_sub = sub_config(cfg, "reward", out)
    d_grade, _ = build_grade_dataset(r_sub, r_sub.stage, tracker)
    replay = d_grade.shuffle(seed=int(cfg.seed) + t).select(range(min(int(a.replay), len(d_grade))))
    mixed = datasets.concatenate_datasets([pref, replay.select_columns(pref.column_names).cast(pref.features)])
    pref_dir = out / "d_pref"
    with atomic_dir(pref_dir) as tmp:
        mixed.save_to_disk(str(tmp))
    r = sub_config(cfg, "reward", out, init=rm_path, train_data=str(pref_dir), max_steps=int(a.max_steps),
                   lr=float(a.lr), head_lr=float(a.lr), batch_size=int(a.batch_size), warmup_steps=0,
                   ckpt_path=None)
    metrics, _ = train_reward(r, r.stage, tracker, out)
    if extra["heldout"] is not None:
        metrics.update(heldout_ranking_metrics(rm_path, str(out / "reward_model"), extra["heldout"]))
    metrics.update(extra["metrics"])
    n = len(preds)
    metrics.update({"pref/rows": float(n), "pref/policy_acc": sum(p["pred"] == q["answer"] for p, q in
                                                                 zip(preds, prompts, strict=True)) / max(n, 1)})
    return metrics, out / "reward_model"
