"""The Ray Train worker loop, shared by every method.

Each epoch every rank reads its share of the shards, augments on its own device and steps the optimizer, then
all ranks call ``ray.train.report`` once, rank 0 with the checkpoint: the model, optimizer and scheduler, the
counters, and every rank's random state, so a resumed run continues the same data, augmentation and noise
streams. The checkpoint's metadata names the Ray node of every rank (:data:`WORKER_NODES`).
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from pipeline.config import JobConfig
from pipeline.data import ShardLoader, read_manifest
from pipeline.distributed import gather_objects, mean_across_ranks, sum_across_ranks, world
from pipeline.errors import SslpipeError
from pipeline.methods import METHODS, build_method
from pipeline.models import encoder_spec
from pipeline.optim import build_optimizer
from pipeline.schedules import warmup_cosine
from pipeline.train.checkpoint import CHECKPOINT_FILE, restore_state, rng_state, save_checkpoint, set_rng_state
from pipeline.train.progress import EpochClock, epoch_line, quiet_ray_train_reports
from pipeline.train.views import TrainingViews

log = logging.getLogger(__name__)
WORKER_NODES = "worker_nodes"  # checkpoint metadata: the Ray node id of each rank, in rank order
LOSS_READ_EVERY = 25  # steps between reads of the loss (a host sync on GPUs), each checking it is finite
Monitor = Callable[[nn.Module, torch.device], dict[str, float]]  # rank 0, after each epoch: encoder -> metrics
Finisher = Callable[[nn.Module, torch.device], None]  # every rank, after the last epoch: the method (e.g. features)


class NonFiniteLoss(SslpipeError):
    """The loss became NaN or infinite."""


def steps_in(loader: ShardLoader, epochs: int, cap: int | None = None) -> list[int]:
    """Batches per epoch for ``epochs`` epochs (it can vary by one shard's worth between epochs), at most ``cap``."""
    counts = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        counts.append(len(loader) if cap is None else min(len(loader), cap))
    return counts


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, views: Sequence[torch.Tensor], autocast: bool
) -> torch.Tensor:
    """One optimizer step of ``model`` (a method or its DDP wrapper) on augmented ``views``; returns the loss,
    detached, where it was computed (reading it waits for the device: the loop reads every
    :data:`LOSS_READ_EVERY` steps)."""
    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with torch.autocast(views[0].device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(*views)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def check_finite(
    loss_sum: torch.Tensor, last: torch.Tensor, epoch: int, step: int, rank: int, config: JobConfig
) -> None:
    """Raise :class:`NonFiniteLoss` once the epoch's running loss is NaN or infinite (so the epoch's checkpoint
    is never written)."""
    if not math.isfinite(loss_sum.item()):
        raise NonFiniteLoss(
            f"loss is {last.item()} at epoch {epoch}, step {step} (rank {rank}); lower optim.lr "
            f"(now {config.optim.lr}) or check the data in {config.data.shards}"
        )


def train_worker(payload: dict) -> None:
    """``train_loop_per_worker``: ``payload`` holds the job config dict, the ``monitors`` rank 0 runs on the
    encoder after each epoch (their metrics are reported beside the loss) and the ``finishers`` every rank runs on
    the trained method after the last epoch (also when a resumed run has no epoch left), such as evaluation's
    feature pass over the rank's share of the evaluation shards."""
    import ray
    import ray.train
    import ray.train.torch

    config = JobConfig.from_dict(payload["config"])
    rank, world_size = world()
    device = ray.train.torch.get_device()
    torch.set_num_threads(config.train.cpus_per_worker)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick its fastest kernels
    torch.manual_seed(config.train.seed)  # the same initial weights on every rank (BYOL's target included)

    manifest = read_manifest(config.data.shards)
    views = TrainingViews(config, manifest, METHODS[config.method.name].num_views, device, rank)
    loader = ShardLoader(
        config.data.shards, "train", config.data.batch_size, num_workers=config.data.num_workers,
        mode=config.data.mode, seed=config.train.seed, url_template=config.data.url_template,
        pin_memory=device.type == "cuda", exclude_classes=config.data.exclude_classes(len(manifest.class_names)),
        skip_bad_samples=config.data.skip_bad_samples, manifest=manifest, **views.loader_options(),
    )
    spec = encoder_spec(config.model, manifest, config.data.crop_size)
    method = build_method(config.method, spec, config.model).to(memory_format=torch.channels_last)
    torch.manual_seed(config.train.seed + 1 + rank)
    if config.train.sync_batchnorm and world_size > 1:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    model = ray.train.torch.prepare_model(method)  # moves to device, wraps in DDP when world_size > 1
    if config.train.compile:
        model = torch.compile(model)  # the first steps compile; checkpoints keep the plain method's weights
    optimizer = build_optimizer(method, config.optim, config.data.batch_size * world_size)
    per_epoch = steps_in(loader, config.train.epochs, config.train.max_steps_per_epoch)
    total_steps = sum(per_epoch)
    warmup = min(total_steps, max(1, math.ceil(config.optim.warmup_epochs * per_epoch[0])))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup))
    autocast = device.type == "cuda" and config.train.amp

    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = restore_state(checkpoint)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
        views.augmenter.calls = step  # continue the augmentation stream instead of replaying it
        saved = state.get("rng", [])  # (none in checkpoints of sslpipe 0.1)
        if len(saved) == world_size:
            set_rng_state(saved[rank], device)
        else:
            log.warning("the checkpoint holds the random state of %d ranks, this run has %d: random streams "
                        "restart from train.seed", len(saved), world_size)
    nodes = gather_objects(ray.get_runtime_context().get_node_id())  # where each rank runs (after a restart too)
    monitors = payload["monitors"] if rank == 0 else []
    quiet_ray_train_reports()
    run_started, run_first_step = time.perf_counter(), step

    for epoch in range(start_epoch, config.train.epochs):
        loader.set_epoch(epoch)
        model.train()
        loss_sum = value = torch.zeros((), device=device)
        clock = EpochClock(epoch, config.train.epochs, total_steps, run_started, run_first_step,
                           show=log.info if rank == 0 else None,  # Ray Train's worker logging shows INFO
                           world_size=world_size)
        capped = config.train.max_steps_per_epoch is not None  # (uncapped, the loader ends the epoch itself)
        views.set_epoch(epoch)
        for images, labels, _ in clock.batches(itertools.islice(loader, per_epoch[epoch]) if capped else loader):
            value = train_step(model, optimizer, views(images), autocast)
            loss_sum += value.float()
            scheduler.step()
            step += 1
            method.after_step(step, total_steps)
            clock.step(len(labels), step)
            if step % LOSS_READ_EVERY == 0:
                check_finite(loss_sum, value, epoch, step, rank, config)
        check_finite(loss_sum, value, epoch, step, rank, config)
        elapsed = clock.elapsed
        epoch_images, skipped = sum_across_ranks(torch.tensor([clock.images, loader.skipped], device=device)).tolist()
        rates = gather_objects(clock.images_per_s)
        metrics = {
            "epoch": epoch,
            "step": step,
            "start_epoch": start_epoch,
            "loss": mean_across_ranks(loss_sum.item() / max(1, per_epoch[epoch]), device),
            "lr": scheduler.get_last_lr()[0],
            "images": epoch_images,
            "images_per_s": epoch_images / elapsed,
            **{f"images_per_s_rank_{r}": rate for r, rate in enumerate(rates)},
            "data_wait_fraction": max(gather_objects(clock.wait_fraction)),  # the rank that waited most
            "skipped_samples": skipped,  # bad samples left out this epoch (data.skip_bad_samples), all ranks
            **({"photos_decoded_on_device": float(views.decode_on_device)} if manifest.photos else {}),
            **method.epoch_metrics(sum_across_ranks),
        }
        if rank == 0:
            log.info(epoch_line(epoch, config.train.epochs, metrics["loss"], metrics["images_per_s"],
                                metrics["data_wait_fraction"], elapsed))
        for monitor in monitors:  # on rank 0 only: it must not draw from the streams a resumed run restores
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                metrics |= monitor(method.encoder, device)
        rng = gather_objects(rng_state(device))
        state = {
            "model": method.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1, "step": step, "rng": rng, "config": config.to_dict(), "spec": method.spec.to_dict(),
            "metrics": metrics,
        }
        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                save_checkpoint(Path(directory) / CHECKPOINT_FILE, state)
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
                report_checkpoint.set_metadata({WORKER_NODES: nodes})
            ray.train.report(metrics, checkpoint=report_checkpoint)
    finishers = payload.get("finishers", [])
    if finishers:
        broadcast_state(method)  # rank 0's BatchNorm statistics are the checkpoint's (DDP leaves each rank its own)
    for finisher in finishers:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            finisher(method, device)


@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Every rank's parameters and buffers set to rank 0's, in place (a no-op in a single process)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return
    for tensor in module.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            dist.broadcast(tensor, 0)
