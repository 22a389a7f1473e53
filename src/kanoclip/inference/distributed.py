"""Processes under `torchrun`: training (DDP) and evaluation sharded over ranks, NCCL on GPUs, gloo on CPUs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Distributed:
    """`torchrun` sets WORLD_SIZE/RANK/LOCAL_RANK; a plain run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local)
    return Distributed(dist.get_rank(), dist.get_world_size(), local)


def current() -> Distributed:
    """This process's place, once `init_distributed` ran (a world of one otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard_batches(n: int, batch_size: int, place: Distributed) -> list[int]:
    """This rank's indices: whole batches of the single-process batching, dealt round-robin. No index is padded or
    repeated (DistributedSampler's padding would bias metrics), and every batch holds the images it would hold in
    one process, so per-image outputs are those of a single-process run."""
    starts = range(0, n, batch_size)
    return [i for start in list(starts)[place.rank :: place.world] for i in range(start, min(start + batch_size, n))]


def gather_to_main(value: Any, place: Distributed) -> list[Any] | None:
    """Every rank's `value` on rank 0 (in rank order); None elsewhere."""
    if place.world == 1:
        return [value]
    out: list[Any] | None = [None] * place.world if place.main else None
    dist.gather_object(value, out, dst=0)
    return out
