"""The training harness without Ray: a :class:`~pipeline.train.session.Session` for this process, or for each rank
of a gloo group a test starts, so tests of the loop itself (resume, random streams, the finite-loss stop) take
seconds. What only Ray does (restarting a killed worker, storing its checkpoints) stays in test_reliability.py."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import JobConfig
from pipeline.data import read_manifest
from pipeline.distributed import world
from pipeline.evaluate.suite import evaluate_method, monitors
from pipeline.job import evaluation_plan
from pipeline.methods import trained_method
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.harness import train
from pipeline.train.pretraining import Pretraining
from pipeline.train.session import Session


class Interrupted(Exception):
    """The run stopped on purpose after a report, as a crash right after a checkpoint would stop it."""


class InProcess(Session):
    """Rank ``world()`` on the CPU (DDP when a gloo group is initialised); rank 0's checkpoints kept in
    ``folder/epoch-N`` and the newest resumed from; every report kept in ``reports``. With ``stop_after``, raises
    :class:`Interrupted` after that many reports."""

    def __init__(self, folder: Path, stop_after: int | None = None) -> None:
        self.folder, self.stop_after, self.reports = Path(folder), stop_after, []

    def device(self) -> torch.device:
        return torch.device("cpu")

    def node(self) -> str:
        return platform.node()

    def prepare_model(self, module: nn.Module) -> nn.Module:
        return DistributedDataParallel(module) if world()[1] > 1 else module

    def resume_state(self) -> dict | None:
        saved = sorted(self.folder.glob("epoch-*"), key=lambda path: int(path.name.split("-")[1]))
        return load_checkpoint(saved[-1]) if saved else None

    def report(self, metrics: dict[str, float], directory: Path | None, nodes: list[str]) -> None:
        self.reports.append(metrics)
        if directory is not None:
            shutil.copytree(directory, self.folder / f"epoch-{int(metrics['epoch'])}")
        if self.stop_after is not None and len(self.reports) >= self.stop_after:
            raise Interrupted(f"stopped after {len(self.reports)} report(s)")


def pretrain_in_process(config: JobConfig, folder: Path) -> dict[str, float]:
    """``sslpipe pretrain``'s training and evaluation of ``config`` as one rank in this process (no tracking, no
    export; checkpoints and plots in ``folder``): the final evaluation's metrics. For what a method learns, where a
    Ray Train run would add only its start-up."""
    manifest = read_manifest(config.data.shards)
    plan = evaluation_plan(config, manifest)
    session = InProcess(folder / "checkpoints")
    train(config, Pretraining(monitors(plan), progress=False), session)
    state = session.resume_state()  # the last epoch's checkpoint
    method = trained_method(config.method, config.model, manifest, state, config.data.crop_size)
    metrics, _ = evaluate_method(method, plan, folder / "evaluation")
    return metrics
