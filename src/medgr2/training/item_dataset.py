"""Torch datasets over the canonical record datasets, mapped to chat items lazily."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset


class ItemDataset(Dataset):
    """``rows[i]`` -> ``to_item(rows[i])``: images are decoded only when a batch needs them."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], to_item: Callable[[Mapping[str, Any]], dict]):
        self.rows = rows
        self.to_item = to_item

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.to_item(self.rows[int(i)])
