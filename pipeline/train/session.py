"""Where the training harness meets the process that runs it. :class:`Session` is everything the harness asks of
that process (its device and machine, the data-parallel wrapper, the checkpoint to resume from, the report of an
epoch); every run passes :class:`RayTrainSession`, a Ray Train worker's context, so the harness itself holds no
Ray call and runs in any process that provides these five."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from pipeline.train.checkpoint import restore_state

WORKER_NODES = "worker_nodes"  # checkpoint metadata: the Ray node id of each rank, in rank order


class Session(ABC):
    """What the harness asks of the process running one rank."""

    @abstractmethod
    def device(self) -> torch.device:
        """This rank's device."""

    @abstractmethod
    def node(self) -> str:
        """The id of the machine (the Ray node) this rank runs on."""

    @abstractmethod
    def prepare_model(self, module: nn.Module) -> nn.Module:
        """``module`` on this rank's device, wrapped for data parallelism when there are several ranks."""

    @abstractmethod
    def resume_state(self) -> dict | None:
        """The state of the checkpoint to resume from (the harness's checkpoint dict), ``None`` to start afresh."""

    @abstractmethod
    def report(self, metrics: dict[str, float], directory: Path | None, nodes: list[str]) -> None:
        """This rank's report of an epoch; rank 0 passes the ``directory`` its checkpoint was written in, and
        ``nodes`` (each rank's :meth:`node`, in rank order)."""


class RayTrainSession(Session):
    """A Ray Train worker: Ray's device and ``prepare_model``, its checkpoints (a damaged newest one falls back to
    the one before, :func:`~pipeline.train.checkpoint.restore_state`) and ``ray.train.report``."""

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def prepare_model(self, module: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(module)  # moves to device, wraps in DDP when world_size > 1

    def resume_state(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return restore_state(checkpoint) if checkpoint else None

    def report(self, metrics: dict[str, float], directory: Path | None, nodes: list[str]) -> None:
        import ray.train

        checkpoint = None
        if directory is not None:
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            checkpoint.set_metadata({WORKER_NODES: nodes})
        ray.train.report(metrics, checkpoint=checkpoint)
