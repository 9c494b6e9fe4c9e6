"""The few collective operations the RL trainer needs, over torch.distributed.

Works the same under `accelerate launch` (it initialises the process group through
accelerate), under `torchrun`, or with a process group the caller set up (e.g. gloo in
a test). With one process every operation is the identity.

The trainer's design keeps communication small: every process draws the same global
prompts and seeds, so only rewards (and a few metric numbers) are gathered; LoRA
gradients are averaged with one all-reduce per optimizer step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "Processes":
        """The initialised process group, or a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def from_environment(cls) -> tuple["Processes", torch.device]:
        """Joins the group that `accelerate launch` / `torchrun` describe in the environment
        (WORLD_SIZE > 1), through accelerate; returns it and this process's device."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            try:
                from accelerate import PartialState
            except ImportError:
                raise ValueError("several processes (WORLD_SIZE > 1) need accelerate: pip install 'instructbooth[multi-gpu]'"
                                 " (or accelerate)") from None

            state = PartialState()
            return cls(state.process_index, state.num_processes), state.device
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return cls.current(), device

    def local_slice(self, count: int) -> slice:
        """This process's rows of a global batch of world_size x count rows."""
        return slice(self.rank * count, (self.rank + 1) * count)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenation over processes, in rank order, of equally shaped tensors [n, ...] -> [W*n, ...] (CPU)."""
        values = values.detach()
        if self.world_size == 1:
            return values.cpu()
        device = _collective_device(values)
        parts = [torch.empty_like(values, device=device) for _ in range(self.world_size)]
        dist.all_gather(parts, values.to(device).contiguous())
        return torch.cat(parts).cpu()

    def gather_objects(self, items: Sequence[Any]) -> list[Any]:
        """Concatenation over processes, in rank order, of picklable lists (any lengths)."""
        if self.world_size == 1:
            return list(items)
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, list(items))
        return [item for part in parts for item in part]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (a copy on values' device)."""
        if self.world_size == 1:
            return values.detach().clone()
        device = _collective_device(values)
        total = values.detach().to(device).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(values.device)

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replaces each parameter's gradient with its mean over processes (one all-reduce)."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = self.sum(flat) / self.world_size
        offset = 0
        for param, grad in zip(params, grads):
            size = grad.numel()
            param.grad = flat[offset : offset + size].view_as(grad).to(grad.dtype)
            offset += size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """NCCL needs CUDA tensors; gloo takes CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
