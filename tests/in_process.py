"""The training harness in this process or in each rank of a gloo group a test starts, through the session that
``train.num_workers: 0`` runs (:class:`~pipeline.train.session.InProcessSession`), so tests of the loop itself
(resume, random streams, the finite-loss stop) take seconds. What only Ray does (restarting a killed worker, storing
its checkpoints) stays in test_reliability.py."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.distributed import world
from pipeline.train.session import InProcessSession


class Interrupted(Exception):
    """The run stopped on purpose after a report, as a crash right after a checkpoint would stop it."""


class InProcess(InProcessSession):
    """The in-process session on the CPU, checkpoints in ``folder/checkpoint_<epoch>``, with DDP when a gloo group
    is initialised (as Ray Train's ``prepare_model``); every report kept in ``reports``. With ``stop_after``, raises
    :class:`Interrupted` after that many reports."""

    def __init__(self, folder: Path, stop_after: int | None = None) -> None:
        super().__init__(str(folder))
        self.stop_after, self.reports = stop_after, []

    def prepare_model(self, module: nn.Module) -> nn.Module:
        return DistributedDataParallel(module) if world()[1] > 1 else module

    def report(self, metrics: dict[str, float], directory: Path | None, nodes: list[str]) -> None:
        super().report(metrics, directory, nodes)
        self.reports.append(metrics)
        if self.stop_after is not None and len(self.reports) >= self.stop_after:
            raise Interrupted(f"stopped after {len(self.reports)} report(s)")
