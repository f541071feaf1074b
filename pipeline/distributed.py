"""Where this process stands among the training ranks, and torch.distributed helpers that degrade to no-ops in a
single process. The two questions about rank and world size are answered here only: :func:`world`, what
collectives and losses reduce over (the process group), and :func:`position`, which share of the data this
process reads."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one: what collectives reduce over."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def position() -> tuple[int, int]:
    """``(rank, world_size)`` of this process among the ranks that share the data: the process group's, else the
    Ray Train worker's context (a worker without a process group), else ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return world()
    if "ray.train" in sys.modules:
        import ray.train

        try:
            context = ray.train.get_context()
            return context.get_world_rank(), context.get_world_size()
        except (RuntimeError, DeprecationWarning):  # not inside a Ray Train worker (the latter: in a Tune trial)
            pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward all-reduces the stacked gradients and returns this rank's slice, so every
    rank's loss terms reach the embeddings they came from."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gathered = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` on each of ``W`` ranks -> ``(W * B, D)`` in rank order, differentiable."""
    if world()[1] == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x))


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over all ranks (a new tensor; the input is left alone)."""
    total = tensor.clone()
    if world()[1] > 1:
        dist.all_reduce(total)
    return total


def gather_objects(obj: object) -> list:
    """``obj`` (picklable) from every rank, in rank order; ``[obj]`` in a single process."""
    world_size = world()[1]
    if world_size == 1:
        return [obj]
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_across_ranks(value: float, device: torch.device) -> float:
    """Average of a Python number over all ranks (for reporting)."""
    return sum_across_ranks(torch.tensor([value], dtype=torch.float64, device=device)).item() / world()[1]
