"""A GRPO run resumed from a checkpoint continues exactly where it stopped: the same prompts in the same order and
the same random numbers (rollout sampling draws from torch's global RNG).

- :class:`ResumableSampler` shuffles the prompts like the loader it replaces: on one process like
  ``RandomSampler`` (a seed drawn from torch's global RNG at each epoch start, so a run's results do not change),
  on several like the ``DistributedSampler`` Lightning would inject (``PL_GLOBAL_SEED`` + epoch, each rank its
  slice). It can replay an epoch's order and skip the prompts already trained on.
- :class:`GRPOResumeState` is a Lightning callback whose state goes into every checkpoint: the epoch, the
  batches done in it, the epoch's shuffle seed and the RNG states (torch CPU/CUDA, numpy, python). Loading it
  restores the RNG states and positions the sampler before Lightning creates the epoch's iterator.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sized
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffled prompt order per epoch that a resumed run replays and skips into (see the module docstring).

    A ``DistributedSampler`` subclass so that Lightning leaves it in place under DDP/FSDP; the world size is read
    from the process group when one exists (Lightning creates it inside ``fit``).
    """

    def __init__(self, data_source: Sized):
        super().__init__(data_source, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=False)
        self.n = len(data_source)
        self.epoch_seed: int | None = None  # the seed of the epoch being iterated (one process)
        self._resume: tuple[int | None, int] | None = None  # (epoch seed, samples to skip) for the next iteration

    def _world(self) -> None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.num_replicas, self.rank = dist.get_world_size(), dist.get_rank()
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # what Lightning's injected sampler would use
        else:
            self.num_replicas, self.rank = 1, 0
        self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __len__(self) -> int:
        self._world()
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        self._world()
        resume, self._resume = self._resume, None
        if self.num_replicas > 1:
            order = list(super().__iter__())  # (seed + epoch) permutation, this rank's slice
        else:
            seed = resume[0] if resume is not None and resume[0] is not None else \
                int(torch.empty((), dtype=torch.int64).random_().item())  # RandomSampler's draw
            self.epoch_seed = seed
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist()
        return iter(order[resume[1]:] if resume is not None else order)

    def resume_at(self, epoch: int, epoch_seed: int | None, skip: int) -> None:
        """The next iteration replays ``epoch`` (with ``epoch_seed`` on one process) from sample ``skip`` on."""
        self.set_epoch(epoch)
        self._resume = (epoch_seed, int(skip))


def rng_states() -> dict[str, Any]:
    """Every RNG a GRPO step draws from, as plain tensors/lists (checkpoints load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore :func:`rng_states`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class GRPOResumeState(L.Callback):
    """Saves and restores the prompt position and the RNG states with every checkpoint (see the module docstring).

    Args:
        sampler: the training loader's :class:`ResumableSampler`.
        batch_size: prompts per batch (per process).
        drop_last: whether the loader drops a last, incomplete batch (for the number of batches in an epoch).
    """

    def __init__(self, sampler: ResumableSampler, batch_size: int, drop_last: bool = False):
        self.sampler, self.batch_size, self.drop_last = sampler, int(batch_size), bool(drop_last)
        self.epoch = 0
        self.batches = 0  # batches trained on in the current epoch (this rank)
        self._rng: dict[str, Any] | None = None  # RNG states to restore when training starts

    @property
    def state_key(self) -> str:
        return "GRPOResumeState"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng is not None:
            set_rng_states(self._rng)
            self._rng = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch, self.batches = int(trainer.current_epoch), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        seed = self.sampler.epoch_seed
        return {"epoch": self.epoch, "batches": self.batches, "epoch_seed": -1 if seed is None else seed,
                "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called before Lightning builds the epoch's iterator (which draws a base seed from torch's RNG, and on
        one process our sampler draws the epoch's shuffle seed)."""
        self.epoch, self.batches = int(state_dict["epoch"]), int(state_dict["batches"])
        seed = None if int(state_dict["epoch_seed"]) < 0 else int(state_dict["epoch_seed"])
        per_epoch = len(self.sampler) / self.batch_size
        per_epoch = math.floor(per_epoch) if self.drop_last else math.ceil(per_epoch)
        if self.batches >= per_epoch:
            # Stopped at the end of an epoch: the uninterrupted run would now build the next epoch's iterator,
            # drawing from the RNGs as it is restored now. Restore before Lightning does it.
            self.epoch, self.batches = self.epoch + 1, 0
            self.sampler.resume_at(self.epoch, None, 0)
            set_rng_states(state_dict["rng"])
        else:
            # Mid-epoch the uninterrupted run draws nothing before its next step, but Lightning builds a new
            # iterator here: restore when training starts, after that.
            self.sampler.resume_at(self.epoch, seed, self.batches * self.batch_size)
            self._rng = state_dict["rng"]
