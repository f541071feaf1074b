"""Pretraining's step for the harness: a method's loss on its views, its own update after each optimizer step (an
EMA target, a KL weight), its epoch metrics, the monitors rank 0 runs after each epoch (the online kNN) and the
finishers every rank runs on the trained method after the last (evaluation's feature pass)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.config.job_config import JobConfig
from pipeline.data import Manifest
from pipeline.distributed import sum_across_ranks, world
from pipeline.methods import METHODS, Method, build_method
from pipeline.models import EncoderSpec, encoder_spec
from pipeline.optim import build_optimizer
from pipeline.train.step import Step

Monitor = Callable[[nn.Module, torch.device], dict[str, float]]  # rank 0, after each epoch: encoder -> metrics
Finisher = Callable[[nn.Module, torch.device], None]  # every rank, after the last epoch: the method (e.g. features)


@dataclass(frozen=True)
class Pretraining(Step):
    """``monitors`` and ``finishers`` are picklable: made where the job is configured, run where it trains.
    Without ``progress``, the workers log warnings and errors only (a search trial: the search prints its own
    lines)."""

    monitors: tuple[Monitor, ...] = ()
    finishers: tuple[Finisher, ...] = ()
    progress: bool = True

    def num_views(self, config: JobConfig) -> int:
        return METHODS[config.method.name].num_views

    def build(self, config: JobConfig, manifest: Manifest) -> tuple[Method, EncoderSpec]:
        method = build_method(config.method, encoder_spec(config.model, manifest, config.data.crop_size), config.model)
        return method, method.spec

    def optimizer(self, module: nn.Module, config: JobConfig, world_size: int) -> tuple[torch.optim.Optimizer, float]:
        return build_optimizer(module, config.optim, config.data.batch_size * world_size), config.optim.warmup_epochs

    def forward(self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        return model(*views), None

    def advice(self, config: JobConfig) -> str:
        return f"lower optim.lr (now {config.optim.lr}) or check the data in {config.data.shards}"

    def after_step(self, module: Method, step: int, total_steps: int) -> None:
        module.after_step(step, total_steps)

    def epoch_metrics(self, module: Method, tallies: None, images: float) -> dict[str, float]:
        return module.epoch_metrics(sum_across_ranks)

    def evaluate(self, module: Method, device: torch.device, last: bool) -> dict[str, float]:
        metrics = {}
        for monitor in self.monitors:
            metrics |= monitor(module.encoder, device)
        return metrics

    def finish(self, module: Method, device: torch.device) -> None:
        if self.finishers:
            broadcast_state(module)  # rank 0's BatchNorm statistics are the checkpoint's (DDP leaves each its own)
        for finisher in self.finishers:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                finisher(module, device)


@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Every rank's parameters and buffers set to rank 0's, in place (a no-op in a single process)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return
    for tensor in module.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            dist.broadcast(tensor, 0)
