"""torch.distributed set up from torchrun's environment: NCCL on CUDA, gloo on the CPU
(:func:`mmrank.device.dist_backend`); a no-op in one process. On CUDA each rank takes the GPU of
its ``LOCAL_RANK``; the gathers and the gradient all-reduce work on the tensors where they are.

In-batch negatives are gathered with ``torch.distributed.nn.functional.all_gather`` so gradients flow
back to the rank that produced each key (as OpenCLIP does); gradients are then averaged over ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mmrank.device import dist_backend, local_rank


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    backend: str = "gloo"     # the process group's (one process: none is made)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device | None = None) -> DistEnv:
        """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else one process.

        ``device`` (None: the CPU) picks the backend, :func:`mmrank.device.dist_backend`: NCCL for
        CUDA (after ``torch.cuda.set_device(LOCAL_RANK)``), gloo for the CPU.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        backend = dist_backend(device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(backend=backend)
        if device.type == "cuda":
            torch.cuda.set_device(device if device.index is not None else local_rank())
        if not dist.is_initialized():
            # long timeout: rank 0 may spend a while encoding features the others then read
            dist.init_process_group(backend, timeout=timedelta(hours=3))
        else:
            backend = dist.get_backend()
        return cls(dist.get_rank(), dist.get_world_size(), backend)

    def barrier(self) -> None:
        if self.world > 1:
            if self.backend == "nccl":  # (NCCL's barrier names the rank's GPU)
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()

    def gather_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, ...)`` per rank -> ``(world * b, ...)`` in rank order; gradients reach every rank."""
        if self.world == 1:
            return x
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)

    @torch.no_grad()
    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' ``x`` concatenated in rank order (no gradient)."""
        if self.world == 1:
            return x
        out = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of every gradient over ranks (missing gradients count as zero)."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[off:off + n].view_as(p))
            off += n

    def shutdown(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
