"""Print the resolved config as a rich tree at start (secrets redacted)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from omegaconf import DictConfig
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from medgr2.pipeline.tracking import resolved_config

ORDER = ("stage", "data", "model", "trainer", "evaluate", "logger", "callbacks", "paths")


def config_tree(cfg: DictConfig) -> Tree:
    """A rich Tree with one branch per top-level config group (known groups first)."""
    data: dict[str, Any] = resolved_config(cfg)
    tree = Tree("[bold]config[/bold]", guide_style="dim")
    keys = [k for k in ORDER if k in data] + [k for k in data if k not in ORDER]
    for key in keys:
        value = data[key]
        branch = tree.add(f"[bold cyan]{key}[/bold cyan]")
        text = yaml.safe_dump(value, sort_keys=False) if isinstance(value, Mapping) else str(value)
        branch.add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", word_wrap=True))
    return tree


def print_config(cfg: DictConfig) -> None:
    Console().print(config_tree(cfg))
