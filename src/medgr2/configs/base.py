"""What every typed stage config shares: one-line checks and reading a resolved node with unknown keys named."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def check(ok: bool, msg: str) -> None:
    """Raise ``ValueError(msg)`` unless ``ok`` (the one-line errors every config gives)."""
    if not ok:
        raise ValueError(msg)


def positive(name: str, value: int | float | None, allow_none: bool = False) -> None:
    """``name`` must be > 0 (or null when ``allow_none``)."""
    check((allow_none and value is None) or (value is not None and value > 0),
          f"{name} must be > 0{' or null' if allow_none else ''}, got {value}")


def non_negative(name: str, value: int | float) -> None:
    """``name`` must be >= 0."""
    check(value >= 0, f"{name} must be >= 0, got {value}")


def one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """``name`` must be one of ``choices``."""
    check(value in choices, f"{name}={value!r}: choose one of {', '.join(choices)}")


def from_node(cls: type[T], node: Mapping[str, Any], stage: str, ignore: tuple[str, ...] = ()) -> T:
    """``cls(**node)`` minus ``ignore``; an unknown key is a one-line error naming it and the stage."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in dict(node).items() if k not in ignore}
    unknown = sorted(k for k in values if k not in known)
    check(not unknown, f"unknown stage={stage} option(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


__all__ = ["check", "from_node", "non_negative", "one_of", "positive"]
