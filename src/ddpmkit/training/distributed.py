"""Process-group setup for torchrun / DistributedDataParallel (gloo on CPU, NCCL on GPU).

``torchrun --nproc_per_node=N -m ddpmkit.cli train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous variables; without them this is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as torch_dist

__all__ = ["DistInfo", "init_distributed"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_ids(self) -> list[int] | None:
        return [self.device.index] if self.device.type == "cuda" else None

    def all_reduce_sum(self, x: torch.Tensor) -> None:
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)

    def all_reduce_mean(self, x: torch.Tensor) -> None:
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)
        x.div_(self.world_size)

    def barrier(self) -> None:
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.barrier()


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, device)
