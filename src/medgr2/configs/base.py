"""What every typed stage config shares: one-line checks and reading a resolved node with unknown keys named."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self, TypeVar

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


class NodeConfig:
    """Mixin of the typed stage configs: :meth:`from_node` reads a resolved node into the dataclass.

    A subclass names itself in ``node_name`` (the stage an unknown-key error names) and may leave nodes that hold
    other stages' settings to them (``node_ignore``)."""

    node_name: ClassVar[str] = ""
    node_ignore: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> Self:
        """From a resolved node (a plain mapping): an unknown key or a bad value is a one-line error."""
        return from_node(cls, node, cls.node_name, ignore=cls.node_ignore)


def replaced(config: T, what: str, **changes: Any) -> T:
    """A copy of dataclass ``config`` with some fields changed (validated again by its ``__post_init__``); an
    unknown name is a one-line error naming it and ``what`` the config is."""
    known = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - known)
    check(not unknown, f"unknown {what} option(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def flat_fields(cls: type, flatten: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                aliases: Mapping[str, str] | None = None) -> list[tuple[str, Any, dataclasses.Field]]:
    """The fields of dataclass ``cls`` as ``make_dataclass`` specs ``(name, type, field)``, with the dataclass
    fields named in ``flatten`` replaced by their own fields, ``exclude`` left out and ``aliases`` ({field name:
    key}) renamed. Types are resolved (``typing.get_type_hints``) and every default is the dataclass's own, so a
    flat schema built from them cannot drift from the typed config it mirrors."""
    aliases = aliases or {}
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Any, dataclasses.Field]] = []
    for f in dataclasses.fields(cls):
        if f.name in flatten:
            out += flat_fields(hints[f.name], exclude=exclude, aliases=aliases)
        elif f.name not in exclude:
            default = (dataclasses.field(default_factory=f.default_factory)
                       if f.default_factory is not dataclasses.MISSING else dataclasses.field(default=f.default))
            out.append((aliases.get(f.name, f.name), hints[f.name], default))
    return out


__all__ = ["NodeConfig", "check", "flat_fields", "from_node", "non_negative", "one_of", "positive", "replaced"]
