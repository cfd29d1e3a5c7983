"""What the closed loop prints: the results table after each iteration, step times, the run's label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

# Summary columns of the results table: (header, metric key in the iteration's metrics).
SUMMARY_COLUMNS = (
    ("kept", "generate/kept"),
    ("selected", "select/n_selected"),
    ("D_gen", "train_rows"),
    ("SFT acc", "sft/test/acc"),
    ("final acc", "test/acc"),
    ("R_φ spearman", "adapt/rm/spearman"),
)


def results_table(rows: Sequence[Mapping[str, float]], baselines: Mapping[str, float]) -> str:
    """Plain-text table: one line per iteration (counts, SFT and final accuracy, R_φ after adaptation)."""

    def fmt(key: str, v: float | None) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}" if "acc" in key else (f"{v:.3f}" if "spearman" in key else f"{int(v)}")

    head = ["iter"] + [h for h, _ in SUMMARY_COLUMNS]
    body = [[str(t)] + [fmt(k, r.get(k)) for _, k in SUMMARY_COLUMNS] for t, r in enumerate(rows)]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(x.rjust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body]]
    base = ", ".join(f"{k} {100 * v:.1f}" for k, v in baselines.items())
    return "\n".join([*lines, f"test baselines: {base}"])


def baselines(final: Mapping[str, float]) -> dict[str, float]:
    """The chance and majority baselines among the final ``test/*`` metrics, by short name."""
    return {k.split("/")[1]: v for k, v in final.items() if k in ("test/chance", "test/majority")}


def duration(seconds: float) -> str:
    """``42.0s``, ``3m05s``, ``1h02m``: a step's time on the console."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def policy_label(cfg: DictConfig, sel: Mapping[str, Any]) -> str:
    """A readable row label: experiment, selection, GRPO, source."""
    method = str(sel["method"])
    what = {"topk": f"TopK k={sel.get('k')}", "randk": f"RandK k={sel.get('k')}",
            "threshold": f"tau>{sel.get('tau')}", "all": "all"}.get(method, method)
    label = f"{cfg.get('experiment_name') or 'default'}: {what}"
    if cfg.stage.grpo_enabled:
        label += " +GRPO"
    if cfg.get("source"):
        label += f" [{cfg.get('source_axis') or 'modality'}={cfg.source}]"
    if int(cfg.stage.iterations) > 1:
        label += f" T={int(cfg.stage.iterations)}"
    return label
