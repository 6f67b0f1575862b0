"""Sharding a job over processes started by `torchrun` (torch.distributed).

Under `torchrun --nproc-per-node N` every process sees RANK/WORLD_SIZE/MASTER_ADDR in its
environment; the job then joins one process group (gloo on CPU, nccl when each rank has a GPU).
Without those variables it runs as a single process and every collective is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Ranks", "join"]


@dataclass
class Ranks:
    """This process's place among the job's processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    joined: bool = False  # whether this object initialised a process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether work item `index` (of a list every rank builds identically) is ours."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (picklable objects, CPU tensors)."""
        if self.world == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def leave(self) -> None:
        if self.joined and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.joined = False


def join(device: str) -> Ranks:
    """Join the process group `torchrun` set up, if any.

    Args:
        device: "cuda" picks nccl (one GPU per rank, by LOCAL_RANK); anything else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if torch.distributed.is_initialized():
        return Ranks(rank=rank, world=world, local_rank=local_rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend=backend)
    return Ranks(rank=rank, world=world, local_rank=local_rank, joined=True)
