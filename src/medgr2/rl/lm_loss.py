"""Next-token loss on the labelled answer only, plus the answer-letter statistics that make learning visible.

The whole-answer loss hides learning: most target tokens (tags, the fixed rationale format) are learnt in a
few steps while the letter — the only token that decides accuracy — is one token among dozens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over labelled positions (Eq. 2 of the paper, per token).

    logits: (B, T, V); labels: (B, T) with -100 where there is no target.
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V) predicts token t+1
    shift_labels = labels[:, 1:]  # (B, T-1)
    n = (shift_labels != IGNORE).sum().clamp(min=1)
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss / n


def answer_window(labels: torch.Tensor) -> int:
    """How many final positions need logits: from the step that predicts the first labelled token to the end.

    labels: (B, T) with -100 outside the targets, which are left-padded to the right end (the collator's
    layout). The LM head then runs on ``(B, K, hidden)`` instead of ``(B, T, hidden)`` — with a 152k vocabulary
    most of an SFT step's time and memory (transformers' ``logits_to_keep``). At least 1.
    """
    cols = torch.nonzero((labels != IGNORE).any(dim=0)).flatten()
    return int(labels.shape[1] - cols.min().item() + 1) if cols.numel() else 1


def letter_stats(logits: torch.Tensor, input_ids: torch.Tensor, letter_pos: torch.Tensor,
                 letter_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher-forced loss and accuracy of the answer letter, restricted to the option letters A–D.

    logits: (B, T, V) — or (B, V) already taken at each row's ``letter_pos - 1``; input_ids: (B, T);
    letter_pos: (B,) index of the token holding the letter or -1; letter_ids: (L,) or (B, L) the token each
    option letter would put at that position (``>A``.. under Qwen's merges, ``A``.. under the tiny tokenizer;
    -1 in rows without a letter). Rows without a letter are ignored; with none at all the values are NaN
    (logged as missing, not as zero).
    """
    has = letter_pos >= 0
    if not bool(has.any()):
        nan = torch.tensor(float("nan"), device=logits.device)
        return {"letter_loss": nan, "letter_acc": nan}
    rows = torch.nonzero(has).squeeze(1)
    pos = letter_pos[rows]
    ids = letter_ids.expand(letter_pos.shape[0], -1)[rows] if letter_ids.dim() == 1 else letter_ids[rows]  # (N, L)
    step = logits[rows, pos - 1] if logits.dim() == 3 else logits[rows]  # (N, V): the step predicting the letter
    scores = step.gather(1, ids).float()  # (N, L)
    target_tok = input_ids[rows, pos]  # (N,)
    target = (ids == target_tok.unsqueeze(1)).float().argmax(dim=1)  # (N,)
    return {
        "letter_loss": F.cross_entropy(scores, target),
        "letter_acc": (scores.argmax(dim=1) == target).float().mean(),
    }


def choice_token_stats(logits: torch.Tensor, labels: torch.Tensor, choice_ids: torch.Tensor,
                       prefix: str = "check") -> dict[str, torch.Tensor]:
    """Teacher-forced loss and accuracy on the labelled tokens that are one of ``choice_ids``, restricted to them.

    With verify rationales (``A) red? no. B) blue? yes.``) the letter is a copy of the last checked one, so
    the letter accuracy is ~1 from the start; the yes/no verdicts carry the decision and are what this measures.
    logits: (B, T, V); labels: (B, T) with -100 outside the target; choice_ids: (C,) e.g. the ids of " yes",
    " no". NaN values when no labelled token is a choice.
    """
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]  # position t predicts token t+1
    sel = torch.isin(shift_labels, choice_ids)  # (B, T-1)
    if not bool(sel.any()):
        nan = torch.tensor(float("nan"), device=logits.device)
        return {f"{prefix}_loss": nan, f"{prefix}_acc": nan}
    scores = shift_logits[sel][:, choice_ids].float()  # (M, C)
    target = (shift_labels[sel].unsqueeze(1) == choice_ids.unsqueeze(0)).float().argmax(dim=1)  # (M,)
    return {f"{prefix}_loss": F.cross_entropy(scores, target),
            f"{prefix}_acc": (scores.argmax(dim=1) == target).float().mean()}
