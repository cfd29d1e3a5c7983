"""R_φ adapted on the policy's own rollouts (paper Algorithm 1 line 12, D_pref as pairs), an image-grounding
negative, and R_φ's accuracy at ranking the policy's right vs wrong rollouts of held-out prompts.

Today's adaptation (``stage.adapt.d_pref=greedy``, :func:`medgr2.pipeline.adapt.adapt_reward`) grades ONE
greedy answer per prompt: R_φ sees the policy's errors only on prompts the policy gets wrong greedily, and never
a right and a wrong answer to the same question side by side. ``stage.adapt.d_pref=pairs`` samples G rollouts per
prompt at the GRPO temperature and keeps, for each prompt with both, pairs of a right and a wrong rollout
(:func:`medgr2.rl.preference_pairs.right_wrong_pairs`), graded as today (right -> ``grading.synonym``, wrong ->
``grading.irrelevant``): the rows differ only in the answer the policy reached, which is what R_φ must learn
to see. ``stage.adapt.image_negatives=true`` adds, per pair, the right rollout under another prompt's image
(graded ``grading.irrelevant``): a response that reads an image it was not written for. R_φ's training loss is
unchanged (regression on the grades), so each option is a config, not a fork.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medgr2.data.collate import ChatCollator, model_inputs
from medgr2.data.schema import FIELDS
from medgr2.evaluation.protocols import DEFAULT_PROTOCOL, extract
from medgr2.models.decoding import sampling
from medgr2.rl.preference_pairs import pairwise_ranking_accuracy, right_wrong_pairs

D_PREF_CHOICES = ("greedy", "pairs")

__all__ = ["D_PREF_CHOICES", "rollout_image_swap_rows", "pair_rows", "ranking_accuracy", "sample_rollouts"]


@torch.no_grad()
def sample_rollouts(model, processor, rows: Sequence[Mapping[str, Any]], *, n: int, instruction: str,
                    max_new_tokens: int, temperature: float = 1.0, batch_size: int = 8,
                    seed: int = 0) -> list[list[dict[str, Any]]]:
    """``n`` sampled completions per record (as GRPO samples them: ancestral, ``temperature``), each
    ``{"completion", "pred", "correct"}`` with ``pred`` the answer letter under the evaluation protocol and
    ``correct`` whether it is the reference (``None`` pred: wrong)."""
    from medgr2.data.prompting import chat_item

    model.eval()
    device = next(model.parameters()).device
    gen, tok = ChatCollator(processor, generation=True), processor.tokenizer
    torch.manual_seed(seed)
    out: list[list[dict[str, Any]]] = []
    for start in range(0, len(rows), batch_size):
        recs = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        inputs = {k: v.to(device) for k, v in model_inputs(gen([chat_item(r, instruction) for r in recs])).items()}
        seqs = model.generate(**inputs, max_new_tokens=int(max_new_tokens), pad_token_id=tok.pad_token_id,
                              num_return_sequences=int(n), **sampling(temperature))  # (B * n, T)
        texts = tok.batch_decode(seqs[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, r in enumerate(recs):
            group = []
            for c in texts[j * n:(j + 1) * n]:
                pred = extract(DEFAULT_PROTOCOL, c, list(r["options"]))
                group.append({"completion": c, "pred": pred, "correct": pred is not None and pred == r["answer"]})
            out.append(group)
    return out


def _row(rec: Mapping[str, Any], response: str, grade: str, target: float, tag: str) -> dict[str, Any]:
    row = {k: rec[k] for k in FIELDS}
    row.update(id=f"{rec['id']}#{tag}", response=response.strip() or "<answer></answer>", target=float(target),
               grade=grade, source_id=str(rec["id"]))
    return row


def pair_rows(rows: Sequence[Mapping[str, Any]], rollouts: Sequence[Sequence[Mapping[str, Any]]],
              grading: Mapping[str, Any], max_pairs: int = 1, seed: int = 0) -> tuple[list[dict[str, Any]], list]:
    """D_pref as pairs: for each prompt with a right and a wrong rollout, up to ``max_pairs`` (right, wrong)
    pairs as graded rows (right -> ``grading.synonym``, wrong -> ``grading.irrelevant``). Returns the rows and the
    ``(prompt, right, wrong)`` index triples they came from."""
    triples = right_wrong_pairs([[r["correct"] for r in g] for g in rollouts], max_pairs=max_pairs, seed=seed)
    out = []
    for n, (p, i, j) in enumerate(triples):
        rec, grp = rows[p], rollouts[p]
        out.append(_row(rec, grp[i]["completion"], "policy_correct", grading["synonym"], f"pair{n}_right"))
        out.append(_row(rec, grp[j]["completion"], "policy_wrong", grading["irrelevant"], f"pair{n}_wrong"))
    return out, triples


def rollout_image_swap_rows(rows: Sequence[Mapping[str, Any]], rollouts: Sequence[Sequence[Mapping[str, Any]]],
                            triples: Sequence[tuple[int, int, int]], grading: Mapping[str, Any],
                            seed: int = 0) -> list[dict[str, Any]]:
    """Image-grounding negatives from the policy's rollouts: each pair's right rollout with the image of another
    prompt (drawn, seeded), graded ``grading.irrelevant``. (R_φ^0's own, on reference responses, are
    :func:`medgr2.data.grade_transforms.image_swap_rows`.) Needs at least two distinct prompts; none are made otherwise."""
    if len(rows) < 2:
        return []
    rng = random.Random(seed)
    out = []
    for n, (p, i, _) in enumerate(triples):
        other = rng.choice([q for q in range(len(rows)) if q != p])
        rec = {**rows[p], "image": rows[other]["image"]}
        out.append(_row(rec, rollouts[p][i]["completion"], "image_swap", grading["irrelevant"], f"pair{n}_imgswap"))
    return out


def ranking_accuracy(scorer, rows: Sequence[Mapping[str, Any]], rollouts: Sequence[Sequence[Mapping[str, Any]]],
                     batch_size: int = 32) -> tuple[float, int]:
    """R_φ's accuracy at ranking the policy's right rollouts above its wrong ones of the same prompt
    (:func:`medgr2.rl.preference_pairs.pairwise_ranking_accuracy`), every rollout scored by ``scorer`` (a
    ``RewardScorer``). Returns ``(accuracy, pairs)``; NaN when no prompt has both."""
    items, correct, groups = [], [], []
    for p, (rec, grp) in enumerate(zip(rows, rollouts, strict=True)):
        if len({r["correct"] for r in grp}) < 2:
            continue  # all right or all wrong: no pair to rank, no need to score
        for r in grp:
            items.append({**{k: rec[k] for k in FIELDS}, "response": r["completion"].strip() or "<answer></answer>"})
            correct.append(r["correct"])
            groups.append(p)
    if not items:
        return float("nan"), 0
    scores = scorer.score(items, batch_size=batch_size)
    return pairwise_ranking_accuracy(list(scores), correct, groups)


def rollout_preferences(cfg, t: int, model, processor, prompts: Sequence[Mapping[str, Any]],
                        grading: Mapping[str, Any]) -> dict[str, Any]:
    """The loop's ``stage.adapt`` options on the policy's sampled rollouts (called while the policy is loaded).

    Returns ``{"rows": D_pref rows or None (d_pref=greedy), "heldout": (records, rollouts) or None,
    "metrics": {...}}``. ``stage.adapt``: ``d_pref`` (greedy | pairs), ``rollouts`` (G per prompt, default the
    GRPO stage's ``num_generations``), ``max_pairs`` per prompt, ``image_negatives``, ``heldout`` (prompts of the
    validation split whose rollouts measure R_φ's ranking accuracy before and after adaptation; 0: off).
    """
    from medgr2.pipeline.common import instruction, load_split

    a, g = cfg.stage.adapt, cfg.stage.grpo
    mode = str(a.get("d_pref", "greedy"))
    if mode not in D_PREF_CHOICES:
        raise ValueError(f"stage.adapt.d_pref={mode!r}: choose one of {', '.join(D_PREF_CHOICES)}")
    kw = {"n": int(a.get("rollouts") or g.num_generations), "instruction": instruction(cfg),
          "max_new_tokens": int(g.max_new_tokens), "temperature": float(g.temperature),
          "batch_size": int(cfg.evaluate.batch_size), "seed": int(cfg.seed) + t}
    out: dict[str, Any] = {"rows": None, "heldout": None, "metrics": {}}
    if mode == "pairs":
        rollouts = sample_rollouts(model, processor, prompts, **kw)
        rows, triples = pair_rows(prompts, rollouts, grading, int(a.get("max_pairs", 1)), seed=int(cfg.seed) + t)
        if bool(a.get("image_negatives", False)):
            rows += rollout_image_swap_rows(prompts, rollouts, triples, grading, seed=int(cfg.seed) + t)
        n_roll = sum(len(r) for r in rollouts)
        out["rows"] = rows
        out["metrics"].update({"pref/pairs": float(len(triples)), "pref/rollouts": float(n_roll),
                               "pref/rollout_acc": sum(r["correct"] for g_ in rollouts for r in g_) / max(n_roll, 1),
                               "pref/informative_frac": len({p for p, _, _ in triples}) / max(len(prompts), 1)})
    n_held = int(a.get("heldout", 0) or 0)
    if n_held > 0:
        val = load_split(cfg, "val")
        held = [val[i] for i in range(min(n_held, len(val)))]
        out["heldout"] = (held, sample_rollouts(model, processor, held, **{**kw, "seed": int(cfg.seed) + 1000 + t}))
    return out


def heldout_ranking_metrics(before: str, after: str, heldout, batch_size: int = 32) -> dict[str, float]:
    """``rm/policy_pair_acc_{before,after}`` (and the pair count): R_φ^t and R_φ^{t+1} ranking the policy's right
    vs wrong rollouts of held-out prompts."""
    from medgr2.modules.reward_scorer import RewardScorer

    rows, rollouts = heldout
    metrics: dict[str, float] = {}
    for name, path in (("before", before), ("after", after)):
        acc, n = ranking_accuracy(RewardScorer(path), rows, rollouts, batch_size)
        metrics[f"rm/policy_pair_acc_{name}"] = acc
        metrics["rm/policy_pairs"] = float(n)
    return metrics
