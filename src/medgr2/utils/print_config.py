"""The resolved config as a rich tree at start (secrets redacted): in the job's log file, and on the console
only when it is a terminal (``print_config=true``, the default); a file or a pipe gets one line saying where
the config is."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Mapping
from typing import Any

import yaml
from omegaconf import DictConfig
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from medgr2.utils.redact import resolved_config

ORDER = ("stage", "data", "model", "trainer", "evaluate", "logger", "callbacks", "paths")
#: The tree's logger: its records go to the job's log file, never to the console (see utils/console.py).
log = logging.getLogger("medgr2.config")


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
    """Show the config tree (terminal) or where it is (file, pipe); the log file gets the tree either way."""
    from medgr2.utils.console import is_terminal

    buf = io.StringIO()
    Console(file=buf, width=110, no_color=True).print(config_tree(cfg))
    log.info("config:\n%s", buf.getvalue())
    if is_terminal(sys.stdout):
        Console().print(config_tree(cfg))
    else:
        where = cfg.paths.get("output_dir") if "paths" in cfg else None
        print(f"config: {where}/.hydra/config.yaml (and the job's log file)" if where else "config: see the log file")
