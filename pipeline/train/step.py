"""What one kind of training hands the harness (:mod:`pipeline.train.harness`): a :class:`Step`. Adding a kind of
worker is writing its step."""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import nn

from pipeline.config.job_config import JobConfig
from pipeline.data import Manifest
from pipeline.models import EncoderSpec

Forward = Callable[[nn.Module, list[torch.Tensor], torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


class Step(abc.ABC):
    """What one kind of training hands the harness: its model, optimizer and loss, and what it reports. Picklable:
    made on the driver, run on every rank. Subclasses define :meth:`build`, :meth:`optimizer`, :meth:`forward`
    and :meth:`advice`; the rest are hooks that do nothing by default."""

    progress = True  # without: the workers log warnings and errors only (a search prints its own lines)

    def num_views(self, config: JobConfig) -> int:
        """Views per image each step takes."""
        return 1

    @abc.abstractmethod
    def build(self, config: JobConfig, manifest: Manifest) -> tuple[nn.Module, EncoderSpec]:
        """The module to train (built on the seeded global generator: the same weights on every rank) and the
        spec of its encoder."""

    @abc.abstractmethod
    def optimizer(self, module: nn.Module, config: JobConfig, world_size: int) -> tuple[torch.optim.Optimizer, float]:
        """The optimizer of ``module`` and its warm-up in epochs."""

    @abc.abstractmethod
    def forward(
        self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(loss, tallies)`` of one batch under autocast: ``tallies`` (a tensor or ``None``) are summed over the
        epoch and the ranks and handed to :meth:`epoch_metrics`."""

    @abc.abstractmethod
    def advice(self, config: JobConfig) -> str:
        """What to do about a loss that is no longer finite."""

    def after_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        """After every optimizer step (e.g. an EMA update)."""

    def epoch_metrics(self, module: nn.Module, tallies: torch.Tensor | None, images: float) -> dict[str, float]:
        """Metrics of the epoch beside the harness's own; every rank calls this (collectives allowed)."""
        return {}

    def report_every(self, epochs: int) -> int:
        """Epochs between reports (and checkpoints)."""
        return 1

    def evaluate(self, module: nn.Module, device: torch.device, last: bool) -> dict[str, float]:
        """Metrics rank 0 measures at each report (``last``: after the final epoch), on a fork of the generators."""
        return {}

    def finish(self, module: nn.Module, device: torch.device) -> None:
        """Every rank, after the last epoch (also when a resumed run has no epoch left)."""
