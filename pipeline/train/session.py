"""Where the training harness meets the process that runs it. :class:`Session` is everything the harness asks of
that process (its device and machine, the data-parallel wrapper, the checkpoint to resume from, the report of an
epoch): a Ray Train worker's (:class:`RayTrainSession`), or this process's alone (:class:`InProcessSession`,
``train.num_workers: 0``), so the harness itself holds no Ray call."""

from __future__ import annotations

import platform
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import storage
from pipeline.train.checkpoint import checkpoint_paths, restore_state

WORKER_NODES = "worker_nodes"  # checkpoint metadata: the Ray node id of each rank, in rank order
KEEP_CHECKPOINTS = 2  # the newest checkpoints a run keeps (Ray Train's num_to_keep, in-process alike)


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


class InProcessSession(Session):
    """This process as the only rank (``train.num_workers: 0``): no Ray Train workers, as Ray Train's local mode,
    but keeping what makes a run whole. Its device is the GPU with ``use_gpu``, else the CPU; each checkpoint is
    stored in ``folder`` (``train.storage_path/<run name>``, a folder or URL) as ``checkpoint_<date and time>/``
    (Ray Train's names: a run moved from Ray Train workers to this process resumes and prunes in order), its file
    written whole (:func:`~pipeline.storage.atomic_writer`), the newest :data:`KEEP_CHECKPOINTS` kept, and a rerun
    resumes from the newest readable one; each report goes to the Ray Train ``callbacks`` (the MLflow epoch logger,
    a search's report to Tune) as Ray Train's controller hands it: ``after_report(None, [metrics], checkpoint)``."""

    def __init__(self, folder: str, use_gpu: bool = False, callbacks: Sequence[Any] = ()) -> None:
        import pyarrow.fs

        self.folder, self.use_gpu, self.callbacks = storage.absolute(folder), use_gpu, list(callbacks)
        self.filesystem, self.root = pyarrow.fs.FileSystem.from_uri(self.folder)

    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.use_gpu else torch.device("cpu")

    def node(self) -> str:
        return platform.node()

    def prepare_model(self, module: nn.Module) -> nn.Module:
        return module.to(self.device())

    def checkpoints(self) -> list[str]:
        """The stored checkpoints' paths in this session's file system, oldest first."""
        return checkpoint_paths(self.filesystem, self.root)

    def resume_state(self) -> dict | None:
        from ray.train import Checkpoint

        stored = self.checkpoints()
        return restore_state(Checkpoint(stored[-1], filesystem=self.filesystem)) if stored else None

    def report(self, metrics: dict[str, float], directory: Path | None, nodes: list[str]) -> None:
        from ray.train import Checkpoint

        checkpoint = None
        if directory is not None:
            name = f"checkpoint_{datetime.today().strftime('%Y-%m-%d_%H-%M-%S.%f')}"
            for file in sorted(Path(directory).iterdir()):
                with storage.atomic_writer(storage.join(self.folder, name), file.name) as out, file.open("rb") as src:
                    shutil.copyfileobj(src, out)
            checkpoint = Checkpoint(f"{self.root.rstrip('/')}/{name}", filesystem=self.filesystem)
            checkpoint.set_metadata({WORKER_NODES: nodes})
            for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
                self.filesystem.delete_dir(old)
        for callback in self.callbacks:
            callback.after_report(None, [metrics], checkpoint)
