"""Greedy generation, answer extraction and per-option probabilities over a dataset of VQA records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from medgr2.data.collate import ChatCollator, model_inputs
from medgr2.data.prompting import SHORT_INSTRUCTION, user_text
from medgr2.evaluation.protocols import DEFAULT_PROTOCOL, extract


def _prompt_item(rec: Mapping[str, Any], instruction: str, prefix: str = "") -> dict[str, Any]:
    return {"image": rec["image"], "prompt": user_text(rec, instruction), "prefix": prefix, "target": ""}


@torch.no_grad()
def predict(model, processor, rows: Sequence[Mapping[str, Any]], *, instruction: str = SHORT_INSTRUCTION,
            batch_size: int = 32, max_new_tokens: int = 48, progress: bool = True,
            protocol: str = DEFAULT_PROTOCOL) -> list[dict[str, Any]]:
    """One prediction per record: the raw completion, the letter it selects under ``protocol`` (see
    :mod:`medgr2.evaluation.protocols`) and option probabilities. The completion and the option texts are kept
    so that saved predictions can be rescored under another protocol.

    Option probabilities come from one extra forward pass: the completion up to ``<answer>`` (appended
    when the model wrote none) and a softmax over the option letters' logits at the next position.
    """
    model.eval()
    device = next(model.parameters()).device
    gen = ChatCollator(processor, generation=True)
    tok = processor.tokenizer
    letter_ids = gen.letter_ids.to(device)
    out: list[dict[str, Any]] = []
    it = range(0, len(rows), batch_size)
    for start in tqdm(it, desc="evaluate", disable=not progress, unit="batch"):
        recs = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = gen([_prompt_item(r, instruction) for r in recs])
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        seqs = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=tok.pad_token_id)
        completions = tok.batch_decode(seqs[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        # Per-option probabilities at the answer slot.
        prefixes = []
        for c in completions:
            cut = c.find("<answer>")
            prefixes.append(c[: cut + len("<answer>")] if cut >= 0 else c.strip() + "<answer>")
        pbatch = gen([_prompt_item(r, instruction, p) for r, p in zip(recs, prefixes, strict=True)])
        logits = model(**{k: v.to(device) for k, v in model_inputs(pbatch).items()}).logits[:, -1]  # (B, V)
        probs = torch.softmax(logits[:, letter_ids].float(), dim=-1).cpu()  # (B, 4)
        for r, c, p in zip(recs, completions, probs, strict=True):
            n = len(r["options"])
            pn = p[:n] / p[:n].sum()
            out.append({"id": r["id"], "completion": c, "pred": extract(protocol, c, list(r["options"])),
                        "protocol": protocol, "options": list(r["options"]), "gold": r["answer"],
                        "option_probs": [round(float(x), 6) for x in pn], "n_options": n,
                        "modality": r["modality"], "question_type": r["question_type"]})
    return out
