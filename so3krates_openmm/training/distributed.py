"""Multi-process training with ``torchrun``: process group set-up and collective helpers.

``torchrun --nproc_per_node P -m so3krates_openmm.training ...`` starts P
processes with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their
environment; :func:`init_distributed` then joins them (gloo on the CPU,
NCCL on GPUs). Without those variables everything runs in one process and
the helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    """Rank and size of the process group (rank 0 of 1 for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` in place over all processes."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, value: float) -> float:
        """The largest ``value`` over all processes (for decisions every process must share)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @property
    def collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group of a ``torchrun`` launch (no-op for a single process)."""
    if not launched_by_torchrun():
        return DistributedContext()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=backend,
    )


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group (if one was joined)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
