"""Greedy generation, answer extraction and per-option probabilities over a dataset of VQA records."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from medgr2.data.collate import ChatCollator, letter_slot, model_inputs
from medgr2.data.prompting import SHORT_INSTRUCTION, chat_item
from medgr2.data.response_format import ANSWER_TAG
from medgr2.data.schema import LETTERS
from medgr2.evaluation.protocols import DEFAULT_PROTOCOL, extract
from medgr2.models.decoding import GREEDY

log = logging.getLogger(__name__)


def answer_context(completion: str) -> str:
    """The completion up to its first ``<answer>`` tag (appended when the model wrote none)."""
    cut = completion.find(ANSWER_TAG)
    return completion[:cut] if cut >= 0 else completion.strip()


def decoding_settings(max_new_tokens: int) -> dict[str, Any]:
    """The effective ``generate()`` settings of :func:`predict` (logged as params by the stages)."""
    return {**GREEDY, "max_new_tokens": int(max_new_tokens)}


@torch.no_grad()
def option_probs(model, collator: ChatCollator, recs: Sequence[Mapping[str, Any]], contexts: Sequence[str],
                 instruction: str) -> list[list[float] | None]:
    """P(option) for each record: the probability of the tokens of ``<answer>X`` after its context, renormalised.

    Under the tokenizer's own merges the options' ``<answer>X`` differ in one token (``B`` for the tiny
    tokenizer, ``>B`` for Qwen's) after a shared context, so one forward on ``context + <answer>A`` gives every
    option's probability at that token's position (the shared tokens cancel in the renormalisation). ``None``
    for a record whose options do not share that context (unknown, never guessed).
    """
    device = next(model.parameters()).device
    tok = collator.tok
    slots = [letter_slot(tok, c + ANSWER_TAG + "A") for c in contexts]
    batch = collator([chat_item(r, instruction, prefix=c + ANSWER_TAG + "A") for r, c in zip(recs, contexts, strict=True)])
    logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits  # (B, T, V)
    T = logits.shape[1]
    out: list[list[float] | None] = []
    for i, (r, c, slot) in enumerate(zip(recs, contexts, slots, strict=True)):
        n = len(r["options"])
        if slot is None:
            out.append(None)
            continue
        k, ids = slot
        m = len(tok(c + ANSWER_TAG + "A", add_special_tokens=False)["input_ids"])
        step = logits[i, T - m + k - 1].float()  # (V,): predicts the letter's token
        p = torch.softmax(step[torch.tensor(ids[:n], device=device)], dim=-1).cpu()  # (n,)
        out.append([round(float(x), 6) for x in p])
    return out


@torch.no_grad()
def predict(model, processor, rows: Sequence[Mapping[str, Any]], *, instruction: str = SHORT_INSTRUCTION,
            batch_size: int = 32, max_new_tokens: int = 48, progress: bool = True,
            protocol: str = DEFAULT_PROTOCOL) -> list[dict[str, Any]]:
    """One prediction per record: the raw completion, the letter it selects under ``protocol`` (see
    :mod:`medgr2.evaluation.protocols`) and option probabilities. The completion and the option texts are kept
    so that saved predictions can be rescored under another protocol.

    Decoding is greedy whatever the checkpoint's ``generation_config.json`` says (:data:`GREEDY` names every
    setting). Option probabilities come from one extra forward pass (:func:`option_probs`).
    """
    model.eval()
    device = next(model.parameters()).device
    gen = ChatCollator(processor, generation=True)
    tok = processor.tokenizer
    out: list[dict[str, Any]] = []
    unknown = 0
    it = range(0, len(rows), batch_size)
    for start in tqdm(it, desc="evaluate", disable=not progress, unit="batch"):
        recs = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = gen([chat_item(r, instruction) for r in recs])
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        seqs = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **GREEDY)
        completions = tok.batch_decode(seqs[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        probs = option_probs(model, gen, recs, [answer_context(c) for c in completions], instruction)
        for r, c, p in zip(recs, completions, probs, strict=True):
            unknown += p is None
            out.append({"id": r["id"], "completion": c, "pred": extract(protocol, c, list(r["options"])),
                        "protocol": protocol, "options": list(r["options"]), "gold": r["answer"],
                        "option_probs": p, "n_options": len(r["options"]),
                        "modality": r["modality"], "question_type": r["question_type"]})
    if unknown:
        log.warning("option probabilities unknown for %d of %d questions (options do not share a context "
                    "under this tokenizer); AUC uses the others", unknown, len(out))
    return out


__all__ = ["LETTERS", "answer_context", "decoding_settings", "option_probs", "predict"]
