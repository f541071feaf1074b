"""The one training harness: every kind of Ray Train worker (pretraining a method, fine-tuning a classifier) is this
loop run with its own :class:`Step`.

Each epoch every rank reads its share of the shards, makes its views on its own device and steps the optimizer
(a warm-up, then a cosine to 0); every ``step.report_every`` epochs and after the last, rank 0 runs the step's
evaluation and all ranks report once, rank 0 with the checkpoint: the model, optimizer and scheduler, the
counters, and every rank's random state, so a resumed run continues the same data, augmentation and noise streams.
What the loop asks of the process running it goes through its :class:`~pipeline.train.session.Session` (a Ray Train
worker's: :func:`train_worker`), so the loop itself also runs in a plain process or gloo group.
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.config.job_config import JobConfig
from pipeline.data import Manifest, ShardLoader, read_manifest
from pipeline.data.decode import EncodedImages
from pipeline.distributed import gather_objects, sum_across_ranks, world
from pipeline.errors import SslpipeError
from pipeline.models import EncoderSpec
from pipeline.models.batchnorm import convert_global_batchnorm
from pipeline.schedules import warmup_cosine
from pipeline.train.amp import group_autocast, precision_name
from pipeline.train.checkpoint import CHECKPOINT_FILE, rng_state, save_checkpoint, set_rng_state
from pipeline.train.progress import EpochClock, epoch_line, quiet_ray_train_reports
from pipeline.train.session import RayTrainSession, Session
from pipeline.train.step import Forward, Step
from pipeline.train.views import TrainingViews

log = logging.getLogger(__name__)
LOSS_READ_EVERY = 25  # steps between reads of the loss (a host sync on GPUs), each checking it is finite


class NonFiniteLoss(SslpipeError):
    """The loss became NaN or infinite."""


@dataclass
class Training:
    """One rank's training: the job, its step, data, views, the module and its wrapped (DDP, compiled) model, and
    whether its steps run under bf16 autocast."""

    config: JobConfig
    step: Step
    device: torch.device
    manifest: Manifest
    views: TrainingViews
    loader: ShardLoader
    module: nn.Module
    spec: EncoderSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    per_epoch: list[int]
    autocast: bool

    @property
    def total_steps(self) -> int:
        return sum(self.per_epoch)

    def take_step(
        self, images: torch.Tensor | EncodedImages, labels: torch.Tensor, indices: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Global step ``step`` (counted from 1) on one loader batch: views, forward, backward, update, the LR
        schedule and the method's own after-step; ``(loss, tallies)`` stay on the device (nothing here waits on it:
        ``tests/train/test_host_syncs.py``). Photos the views leave out count as the loader's skipped samples."""
        views, labels, skipped = self.views(images, labels, indices)
        for skip in skipped:
            self.loader.note(skip)
        value, tally = optimize(self.model, self.optimizer, views, self.autocast, self.step.forward, labels)
        self.scheduler.step()
        self.step.after_step(self.module, step, self.total_steps)
        return value, tally


def steps_in(loader: ShardLoader, epochs: int, cap: int | None = None) -> list[int]:
    """Batches per epoch for ``epochs`` epochs (it can vary by one shard's worth between epochs), at most ``cap``."""
    counts = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        counts.append(len(loader) if cap is None else min(len(loader), cap))
    return counts


def optimize(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    views: Sequence[torch.Tensor],
    autocast: bool,
    forward: Forward,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step of ``model`` on ``views`` (channels-last, under bf16 autocast with ``autocast``):
    ``forward(model, views, labels)`` gives ``(loss, tallies)``, returned detached where they were computed
    (reading them waits for the device: the loop reads the loss every :data:`LOSS_READ_EVERY` steps)."""
    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with torch.autocast(views[0].device.type, dtype=torch.bfloat16, enabled=autocast):
        loss, tallies = forward(model, views, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), tallies


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, views: Sequence[torch.Tensor], autocast: bool
) -> torch.Tensor:
    """One optimizer step of a method (or its DDP wrapper), ``loss = model(*views)``; returns the loss."""
    return optimize(model, optimizer, views, autocast, lambda method, inputs, _: (method(*inputs), None))[0]


def check_finite(loss_sum: torch.Tensor, last: torch.Tensor, epoch: int, step: int, rank: int, advice: str) -> None:
    """Raise :class:`NonFiniteLoss` once the epoch's running loss is NaN or infinite (so the epoch's checkpoint
    is never written)."""
    if not math.isfinite(loss_sum.item()):
        raise NonFiniteLoss(f"loss is {last.item()} at epoch {epoch}, step {step} (rank {rank}); {advice}")


def prepare(config: JobConfig, step: Step, session: Session) -> Training:
    """This rank's loader, views, module (global BatchNorm, DDP and ``torch.compile`` as the job says), optimizer and
    warm-up-cosine schedule."""
    device = session.device()
    rank, world_size = world()
    manifest = read_manifest(config.data.shards)
    views = TrainingViews(config, manifest, step.num_views(config), device, rank)
    loader = ShardLoader(
        config.data.shards,
        "train",
        config.data.batch_size,
        num_workers=config.data.num_workers,
        mode=config.data.mode,
        seed=config.train.seed,
        url_template=config.data.url_template,
        pin_memory=device.type == "cuda",
        exclude_classes=config.data.exclude_classes(len(manifest.class_names)),
        skip_bad_samples=config.data.skip_bad_samples,
        manifest=manifest,
        **views.loader_options(),
    )
    torch.manual_seed(config.train.seed)  # the same initial weights on every rank (BYOL's target included)
    module, spec = step.build(config, manifest)
    module = module.to(memory_format=torch.channels_last)
    torch.manual_seed(config.train.seed + 1 + rank)
    if config.train.sync_batchnorm and world_size > 1:
        module = convert_global_batchnorm(module)
    model = session.prepare_model(module)
    if config.train.compile:
        model = torch.compile(model)  # the first steps compile; checkpoints keep the plain module's weights
    optimizer, warmup_epochs = step.optimizer(module, config, world_size)
    per_epoch = steps_in(loader, config.train.epochs, config.train.max_steps_per_epoch)
    total, warmup = sum(per_epoch), max(1, math.ceil(warmup_epochs * per_epoch[0]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, min(total, warmup)))
    autocast = group_autocast(config.train.amp, device)
    return Training(
        config, step, device, manifest, views, loader, module, spec, model, optimizer, scheduler, per_epoch, autocast
    )


def resume(training: Training, session: Session) -> tuple[int, int]:
    """``(epoch, step)`` to start from: the last checkpoint's, its state restored, or ``(0, 0)``."""
    state = session.resume_state()
    if state is None:
        return 0, 0
    training.module.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    training.views.augmenter.calls = state["step"]  # continue the augmentation stream instead of replaying it
    rank, world_size = world()
    saved = state.get("rng", [])  # (none in checkpoints of sslpipe 0.1)
    if len(saved) == world_size:
        set_rng_state(saved[rank], training.device)
    else:
        log.warning(
            "the checkpoint holds the random state of %d ranks, this run has %d: random streams restart "
            "from train.seed",
            len(saved),
            world_size,
        )
    return state["epoch"], state["step"]


def train_epoch(training: Training, epoch: int, step: int, clock: EpochClock) -> tuple[int, dict[str, float]]:
    """One epoch of this rank from global step ``step``; returns ``(the step after it, the epoch's metrics over all
    ranks)``."""
    config, device, loader = training.config, training.device, training.loader
    rank = world()[0]
    loader.set_epoch(epoch)
    training.views.set_epoch(epoch)
    training.model.train()
    loss_sum = value = torch.zeros((), device=device)
    tallies = None
    capped = config.train.max_steps_per_epoch is not None  # (uncapped, the loader ends the epoch itself)
    for images, labels, indices in clock.batches(
        itertools.islice(loader, training.per_epoch[epoch]) if capped else loader
    ):
        step += 1
        value, tally = training.take_step(images, labels, indices, step)
        loss_sum += value.float()
        tallies = tally if tallies is None else tallies + tally
        clock.step(len(labels), step)
        if step % LOSS_READ_EVERY == 0:
            check_finite(loss_sum, value, epoch, step, rank, training.step.advice(config))
    check_finite(loss_sum, value, epoch, step, rank, training.step.advice(config))
    return step, epoch_metrics(training, epoch, step, clock, loss_sum, tallies)


def epoch_metrics(
    training: Training, epoch: int, step: int, clock: EpochClock, loss_sum: torch.Tensor, tallies: torch.Tensor | None
) -> dict[str, float]:
    """The epoch's loss, LR, images and their rates (every rank's), data wait, skipped samples, and the step's
    own metrics, over all ranks."""
    elapsed, world_size = clock.elapsed, world()[1]
    decoded = training.views.decoded
    counts = [clock.images, training.loader.skipped, loss_sum.item(), decoded["device"], decoded.total()]
    images, skipped, losses, on_device, photos = sum_across_ranks(
        torch.tensor(counts, dtype=torch.float64, device=training.device)
    ).tolist()
    summed = None if tallies is None else sum_across_ranks(tallies)
    rates = gather_objects(clock.images_per_s)
    return {
        "epoch": epoch,
        "step": step,
        "loss": losses / max(1, training.per_epoch[epoch]) / world_size,
        "lr": training.scheduler.get_last_lr()[-1],
        "images": images,
        "images_per_s": images / elapsed,
        **{f"images_per_s_rank_{r}": rate for r, rate in enumerate(rates)},
        # the rank that waited most; decoding photos on the device is the data path's time too
        "data_wait_fraction": max(gather_objects((clock.waited + training.views.decode_s) / elapsed)),
        "skipped_samples": skipped,  # bad samples left out this epoch (data.skip_bad_samples), all ranks
        # the share of the photos that the device's decoder read (measured; the rest: the CPU's, here or in the loader)
        **({"photos_decoded_on_device": on_device / photos if photos else 0.0} if training.manifest.photos else {}),
        **training.step.epoch_metrics(training.module, summed, images),
    }


def report(training: Training, metrics: dict[str, float], nodes: list[str], rng: list[dict], session: Session) -> None:
    """Every rank's report of an epoch; rank 0's with the checkpoint (``rng``, every rank's random state, in it)."""
    rank = world()[0]
    state = {
        "model": training.module.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "epoch": metrics["epoch"] + 1,
        "step": metrics["step"],
        "rng": rng,
        "config": training.config.to_dict(),
        "spec": training.spec.to_dict(),
        "precision": precision_name(training.autocast),
        "metrics": metrics,
    }
    with tempfile.TemporaryDirectory() as directory:
        if rank == 0:
            save_checkpoint(Path(directory) / CHECKPOINT_FILE, state)
        session.report(metrics, Path(directory) if rank == 0 else None, nodes)


def train_worker(payload: dict) -> None:
    """``train_loop_per_worker``: :func:`train` in a Ray Train worker; ``payload`` holds the ``config`` (a
    :class:`~pipeline.config.JobConfig`) and the ``step`` (a :class:`Step`)."""
    quiet_ray_train_reports()
    train(payload["config"], payload["step"], RayTrainSession())


def train(config: JobConfig, step: Step, session: Session) -> None:
    """This rank's whole run of the harness with ``step``: prepare, resume, then every epoch, each report of it."""
    rank = world()[0]
    torch.set_num_threads(config.train.cpus_per_worker)
    training = prepare(config, step, session)
    device = training.device
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick its fastest kernels
    start_epoch, first_step = resume(training, session)
    nodes = gather_objects(session.node())  # where each rank runs (after a restart too)
    if not step.progress:
        logging.getLogger("pipeline").setLevel(logging.WARNING)  # a search trial: the search prints its lines
    if rank == 0:
        log.info("precision: %s (train.amp %s on %s)", precision_name(training.autocast), config.train.amp, device)
    every, started, steps_done = step.report_every(config.train.epochs), time.perf_counter(), first_step
    for epoch in range(start_epoch, config.train.epochs):
        clock = EpochClock(
            epoch,
            config.train.epochs,
            training.total_steps,
            started,
            first_step,
            show=log.info if rank == 0 else None,
            world_size=world()[1],
        )
        steps_done, metrics = train_epoch(training, epoch, steps_done, clock)
        last = epoch + 1 == config.train.epochs
        if not (last or (epoch + 1) % every == 0):
            continue
        metrics |= {"start_epoch": start_epoch}
        # the last collective before the report: the other ranks must not wait in one while rank 0 evaluates
        # (an evaluation longer than the collective's timeout, NCCL's 30 minutes, would fail the run)
        rng = gather_objects(rng_state(device))
        if rank == 0:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                metrics |= step.evaluate(training.module, device, last)  # (it must not shift the random streams)
            scores = "".join(f"  {k} {v:.4f}" for k, v in metrics.items() if k.endswith("_accuracy"))
            log.info(
                epoch_line(
                    epoch,
                    config.train.epochs,
                    metrics["loss"],
                    metrics["images_per_s"],
                    metrics["data_wait_fraction"],
                    clock.elapsed,
                )
                + scores
            )
        report(training, metrics, nodes, rng, session)
    step.finish(training.module, device)
