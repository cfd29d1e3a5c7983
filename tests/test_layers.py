"""The layers stay as docs/architecture.md draws them: ``train.py`` -> ``pipeline`` (stage wiring) ->
``modules`` (LightningModules) -> ``training`` (their non-Lightning machinery: FSDP2, vLLM engine, optimizer,
datasets, R_φ collators) -> ``rl`` (pure maths) / ``models`` (factory) / ``data``; ``report`` reads MLflow and
saved artifacts and never trains; ``utils`` sits under everything.

Every ``import`` in ``src/medgr2`` (also those inside functions) is read with ``ast``; a forbidden edge fails
with the file and the line.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medgr2"
PACKAGES = ("configs", "data", "evaluation", "generation", "models", "modules", "pipeline", "report", "rl",
            "training", "utils")

#: Which medgr2 packages each package must not import.
FORBIDDEN: dict[str, set[str]] = {
    # Pure maths on tensors: nothing of the project, and no Lightning (below).
    "rl": set(PACKAGES) - {"rl"},
    # The factory builds models from a spec; the tokenizer corpus is passed in, so it knows no data set.
    "models": {"configs", "data", "evaluation", "generation", "modules", "pipeline", "report", "rl", "training"},
    # Records, prompts, selection: no model, no training.
    "data": {"configs", "evaluation", "generation", "models", "modules", "pipeline", "report", "rl", "training"},
    # Evaluation runs a model's generate(): it may use the factory's decoding settings, nothing that trains.
    "evaluation": {"configs", "generation", "modules", "pipeline", "report", "training"},
    "generation": {"configs", "evaluation", "modules", "pipeline", "report", "rl", "training"},
    # What the LightningModules run on, below them: no module, no stage, no generator or evaluation.
    "training": {"configs", "evaluation", "generation", "modules", "pipeline", "report"},
    "modules": {"pipeline", "report"},
    # The typed stage configs (imported by medgr2/__init__ to register the schemas): nothing that runs a stage.
    # D_grade's grading node is data's GradeConfig (standard library only); a validator may reach down for the
    # names it checks against (rl's loss types, models' poolings, evaluation's protocols) when it runs, which
    # test_stage_config's import check keeps lazy: `import medgr2` loads no torch, transformers or datasets.
    "configs": {"generation", "modules", "pipeline", "report", "training", "utils"},
    "pipeline": {"report"},
    # Reads MLflow and saved artifacts (CSV, JSON): it never builds a model or runs a stage.
    "report": {"configs", "generation", "models", "modules", "pipeline", "training"},
    # Under everything (utils.cli checks config values with data's validators before a stage starts).
    "utils": {"configs", "evaluation", "generation", "models", "modules", "pipeline", "report", "rl", "training"},
}
#: Third-party packages a layer must not import.
FORBIDDEN_LIBS: dict[str, set[str]] = {
    "rl": {"lightning", "pytorch_lightning", "transformers", "datasets", "mlflow", "hydra"},
    "report": {"lightning", "torch", "transformers"},
    "configs": {"lightning", "pytorch_lightning", "torch", "transformers", "datasets", "mlflow"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import; medgr2 imports absolutely")
    return out


def _violations() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        layer = rel.split("/")[0]
        if layer not in PACKAGES:
            continue
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] == "medgr2" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                found.append(f"{rel}:{line} imports {module} ({layer} must not import {parts[1]})")
            elif parts[0] in FORBIDDEN_LIBS.get(layer, set()):
                found.append(f"{rel}:{line} imports {module} ({layer} must not import {parts[0]})")
    return found


def test_every_package_has_a_layer_rule():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(PACKAGES) == set(FORBIDDEN), "a new package needs its place in FORBIDDEN"


def test_no_import_crosses_the_layers():
    assert _violations() == []


def test_lightning_modules_live_in_modules_only():
    # modules/ is the LightningModule layer; the machinery they run on sits in training/ (and below).
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
                if "LightningModule" in bases and not rel.startswith("modules/"):
                    found.append(f"{rel}: {node.name}")
    assert found == []
