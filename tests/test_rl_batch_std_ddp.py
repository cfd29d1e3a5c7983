"""scale_rewards=batch under data parallelism divides by the std of the rewards of all ranks (TRL), tested on two
CPU processes (gloo) whose rewards are scaled differently."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch

from medgr2.rl.advantages import global_reward_std, group_advantages

G = 4


def _rewards(rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rank)
    return torch.rand(3 * G, generator=g) * (1.0 if rank == 0 else 10.0)  # rank 1's rewards are 10x larger


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        r = _rewards(rank)
        adv = group_advantages(r, G, scale="batch", batch_std=global_reward_std(r))
        torch.save({"adv": adv, "local": group_advantages(r, G, scale="batch")}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batch_scaled_advantages_on_two_ranks_equal_those_of_the_gathered_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    both = torch.cat([_rewards(0), _rewards(1)])
    reference = group_advantages(both, G, scale="batch")  # one process holding every rank's rewards
    got = torch.cat([torch.load(tmp_path / f"rank{r}.pt")["adv"] for r in (0, 1)])
    assert torch.allclose(got, reference, atol=1e-5)
    # Each rank's own std (the old behaviour) would differ: the ranks' scales differ by 10x.
    local = torch.cat([torch.load(tmp_path / f"rank{r}.pt")["local"] for r in (0, 1)])
    assert not torch.allclose(local, reference, atol=1e-2)


def test_without_a_process_group_the_std_is_the_local_one():
    r = _rewards(1)
    assert torch.allclose(global_reward_std(r), r.std(), atol=1e-6)
