"""D_pref from the policy's own rollouts (issue 21): sampled rollouts, right/wrong pairs as graded rows, the
image-grounding negative, R_φ's ranking accuracy with the real scorer, and the loop's adapt step using them."""

from __future__ import annotations

import json

import pytest
import torch

from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.pipeline.reward_pairs import pair_rows, ranking_accuracy, rollout_image_swap_rows, sample_rollouts

GRADING = {"synonym": 6.0, "irrelevant": -6.0, "deletion": 0.0}


def recs(n: int) -> list[dict]:
    return [make_item(SynthMedConfig(), "train", i) for i in range(n)]


def rollout(rec: dict, letter: str | None) -> dict:
    text = f"<think>looks like it</think><answer>{letter}</answer>" if letter else "no idea"
    return {"completion": text, "pred": letter, "correct": letter == rec["answer"]}


def wrong_letter(rec: dict) -> str:
    return next(chr(65 + i) for i in range(len(rec["options"])) if chr(65 + i) != rec["answer"])


def test_pair_rows_grade_a_right_and_a_wrong_rollout_of_the_same_prompt():
    rows = recs(3)
    rollouts = [[rollout(rows[0], rows[0]["answer"]), rollout(rows[0], wrong_letter(rows[0]))],
                [rollout(rows[1], rows[1]["answer"])] * 2,  # all right: no pair
                [rollout(rows[2], None), rollout(rows[2], rows[2]["answer"])]]
    out, triples = pair_rows(rows, rollouts, GRADING)
    assert [p for p, _, _ in triples] == [0, 2]
    assert [(r["source_id"], r["grade"], r["target"]) for r in out] == [
        (rows[0]["id"], "policy_correct", 6.0), (rows[0]["id"], "policy_wrong", -6.0),
        (rows[2]["id"], "policy_correct", 6.0), (rows[2]["id"], "policy_wrong", -6.0)]
    assert len({r["id"] for r in out}) == 4 and out[3]["response"] == "no idea"
    negs = rollout_image_swap_rows(rows, rollouts, triples, GRADING)
    assert [(n["grade"], n["target"]) for n in negs] == [("image_swap", -6.0)] * 2
    for n, (p, i, _) in zip(negs, triples, strict=True):
        assert n["response"] == rollouts[p][i]["completion"].strip() and n["question"] == rows[p]["question"]
        assert n["image"] is not rows[p]["image"]  # the same right answer, under another prompt's image
    assert rollout_image_swap_rows(rows[:1], rollouts[:1], triples[:1], GRADING) == []


def test_sample_rollouts_give_n_graded_samples_per_prompt(shared_cache):
    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import load_vlm

    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)}
    model, processor = load_vlm(spec, lora=False, corpus_fn=tokenizer_corpus)
    rows = recs(3)
    out = sample_rollouts(model, processor, rows, n=3, instruction="Answer.", max_new_tokens=6, batch_size=2)
    assert [len(g) for g in out] == [3, 3, 3]
    for rec, group in zip(rows, out, strict=True):
        for r in group:
            assert isinstance(r["completion"], str)
            assert r["correct"] == (r["pred"] is not None and r["pred"] == rec["answer"])


def test_ranking_accuracy_compares_the_scorers_scores_of_right_and_wrong_rollouts(shared_cache):
    from medgr2.modules.reward import RewardRegressor
    from medgr2.modules.reward_scorer import RewardScorer

    torch.manual_seed(0)
    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)}
    reg = RewardRegressor(model=spec, lora=False, head_hidden=16).eval()
    for p in reg.head.parameters():  # a non-constant head, so the two responses score differently
        torch.nn.init.normal_(p, std=0.5)
    scorer = RewardScorer(reg)
    rows = recs(2)
    rollouts = [[rollout(rows[0], rows[0]["answer"]), rollout(rows[0], wrong_letter(rows[0]))],
                [rollout(rows[1], rows[1]["answer"])] * 2]  # no pair: not scored
    acc, n = ranking_accuracy(scorer, rows, rollouts)
    s = scorer.score([{**rows[0], "response": r["completion"]} for r in rollouts[0]])
    assert n == 1 and acc == (1.0 if s[0] > s[1] else 0.5 if s[0] == s[1] else 0.0)


@pytest.mark.slow
def test_loop_adapts_r_phi_on_right_wrong_pairs_and_logs_its_held_out_ranking_accuracy(make_cfg):
    from test_loop import TINY_LOOP

    from medgr2.pipeline import run
    from medgr2.pipeline.loop import loop_dir

    cfg = make_cfg(*TINY_LOOP, "stage.iterations=2", "logger=none", "stage.eval_after_sft=false",
                   "stage.grpo_enabled=false", "stage.generate.n_sources=24", "stage.adapt.d_pref=pairs",
                   "stage.adapt.rollouts=4", "stage.adapt.max_pairs=2", "stage.adapt.image_negatives=true",
                   "stage.adapt.heldout=6", "stage.grpo.max_new_tokens=12")
    run(cfg)
    steps = json.loads((loop_dir(cfg) / "loop_state.json").read_text())["steps"]
    m = steps["iter0/adapt"]["metrics"]
    assert m["pref/rollouts"] == 8 * 4 and 0.0 <= m["pref/rollout_acc"] <= 1.0
    assert m["pref/pairs"] <= 8 * 2 and 0.0 <= m["pref/informative_frac"] <= 1.0
    assert "rm/policy_pair_acc_before" in m and "rm/policy_pair_acc_after" in m and m["rm/policy_pairs"] >= 0
    import datasets

    d_pref = datasets.load_from_disk(str(loop_dir(cfg) / "iter0" / "adapt" / "d_pref"))
    grades = d_pref["grade"]
    if m["pref/pairs"]:
        assert grades.count("policy_correct") == grades.count("policy_wrong") == m["pref/pairs"]
        assert grades.count("image_swap") == m["pref/pairs"]
    else:  # no prompt had both a right and a wrong rollout: the greedy answers are graded instead
        assert grades.count("policy_correct") + grades.count("policy_wrong") + grades.count("policy_unanswered") == 8
