"""The Ray Train worker of fine-tuning: an encoder (an export's weights, or a fresh one of the same spec) with a
linear head, trained end to end with cross-entropy on one augmented view of each labeled image.

The job config it gets is the fine-tuning's own: ``data.shards`` the labeled subset, ``data.batch_size`` the
images per step per rank, ``augment.preset`` the views, ``train.epochs`` this fraction's epochs, and the
``finetune`` section's optimizer: AdamW, the head at ``finetune.lr`` and the encoder at ``finetune.lr x
finetune.encoder_lr_scale``, weight decay off for BatchNorm and biases, one epoch of linear warm-up then a cosine
to 0. Rank 0 runs the ``evaluations`` it is handed (the test split's accuracy) after the last epoch and reports
their metrics with it. Every ``ceil(epochs / REPORTS)`` epochs and after the last, the ranks report the epoch's
metrics with a checkpoint, from which Ray restarts failed workers (a report costs up to a couple of seconds, against
a fraction of a second for an epoch of a small subset, so not every epoch reports).
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
import torch.nn.functional as F
from torch import nn

from pipeline.config import FinetuneConfig, JobConfig
from pipeline.data import ShardLoader, read_manifest
from pipeline.distributed import gather_objects, sum_across_ranks, world
from pipeline.models import EncoderSpec, build_encoder
from pipeline.optim import parameter_groups
from pipeline.schedules import warmup_cosine
from pipeline.train.checkpoint import CHECKPOINT_FILE, restore_state, rng_state, save_checkpoint, set_rng_state
from pipeline.train.loop import LOSS_READ_EVERY, NonFiniteLoss, steps_in
from pipeline.train.progress import quiet_ray_train_reports
from pipeline.train.views import TrainingViews

log = logging.getLogger(__name__)
REPORTS = 10
Evaluation = Callable[[nn.Module, torch.device], dict[str, float]]  # rank 0, after the last epoch: model -> metrics


def classifier(spec: EncoderSpec, num_classes: int, weights: dict[str, torch.Tensor] | None) -> nn.Sequential:
    """``Sequential(encoder, Linear(D, num_classes))``: float ``(B, C, H, W)`` in [0, 1] -> logits
    ``(B, num_classes)``; the encoder of ``spec`` holds ``weights`` (its state dict) or, without, its initial ones."""
    encoder, dim = build_encoder(spec)
    if weights is not None:
        encoder.load_state_dict(weights)
    return nn.Sequential(encoder, nn.Linear(dim, num_classes))


def finetune_optimizer(model: nn.Sequential, config: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s encoder (``model[0]``, at ``lr x encoder_lr_scale``) and head (``model[1]``, at
    ``lr``), each split into a decayed group and one without decay (BatchNorm, biases)."""
    parts = ((model[0], config.encoder_lr_scale), (model[1], 1.0))
    groups = [{**group, "lr": config.lr * scale} for part, scale in parts
              for group in parameter_groups(part, config.weight_decay)]
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=config.lr)


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int, rank: int, config: JobConfig) -> None:
    if not math.isfinite(loss_sum.item()):
        raise NonFiniteLoss(f"fine-tuning loss is {loss_sum.item()} at epoch {epoch}, step {step} (rank {rank}); "
                            f"lower finetune.lr (now {config.finetune.lr})")


def finetune_worker(payload: dict) -> None:
    """``train_loop_per_worker``: ``payload`` holds the job config dict, the encoder's ``spec`` dict, its
    ``weights`` (``None``: random initialisation) and the ``evaluations`` rank 0 runs after the last epoch."""
    import ray.train
    import ray.train.torch

    config = JobConfig.from_dict(payload["config"])
    spec = EncoderSpec.from_dict(payload["spec"])
    evaluations: Sequence[Evaluation] = payload["evaluations"]
    rank, world_size = world()
    device = ray.train.torch.get_device()
    torch.set_num_threads(config.train.cpus_per_worker)
    torch.backends.cudnn.benchmark = device.type == "cuda"

    manifest = read_manifest(config.data.shards)
    views = TrainingViews(config, manifest, 1, device, rank)
    loader = ShardLoader(
        config.data.shards, "train", config.data.batch_size, num_workers=config.data.num_workers,
        seed=config.train.seed, pin_memory=device.type == "cuda", skip_bad_samples=config.data.skip_bad_samples,
        manifest=manifest, **views.loader_options(),
    )
    torch.manual_seed(config.train.seed)  # the same head (and fresh encoder) on every rank and for either init
    model = classifier(spec, len(manifest.class_names), payload["weights"]).to(memory_format=torch.channels_last)
    torch.manual_seed(config.train.seed + 1 + rank)
    if config.train.sync_batchnorm and world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = ray.train.torch.prepare_model(model)
    optimizer = finetune_optimizer(model, config.finetune)
    per_epoch = steps_in(loader, config.train.epochs, config.train.max_steps_per_epoch)
    total_steps = sum(per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, min(total_steps, per_epoch[0])))
    autocast = device.type == "cuda" and config.train.amp

    start_epoch, step = 0, 0
    if checkpoint := ray.train.get_checkpoint():
        state = restore_state(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
        views.augmenter.calls = step
        if len(state["rng"]) == world_size:
            set_rng_state(state["rng"][rank], device)
    every = math.ceil(config.train.epochs / REPORTS)
    quiet_ray_train_reports()

    for epoch in range(start_epoch, config.train.epochs):
        loader.set_epoch(epoch)
        views.set_epoch(epoch)
        ddp.train()
        sums = torch.zeros(3, device=device)  # loss, correct, images
        started = time.perf_counter()
        for images, labels, _ in itertools.islice(loader, per_epoch[epoch]):
            x = views(images)[0].contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = ddp(x)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            sums += torch.stack([loss.detach() * len(labels), (logits.argmax(1) == labels).sum().float(),
                                 torch.tensor(float(len(labels)), device=device)])
            if step % LOSS_READ_EVERY == 0:
                _check_finite(sums[0], epoch, step, rank, config)
        _check_finite(sums[0], epoch, step, rank, config)
        elapsed = time.perf_counter() - started
        loss_sum, correct, seen = sum_across_ranks(sums).tolist()
        metrics = {"epoch": epoch, "step": step, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                   "lr": scheduler.get_last_lr()[-1], "images": seen, "images_per_s": seen / elapsed}
        last = epoch + 1 == config.train.epochs
        if not (last or (epoch + 1) % every == 0):
            continue
        if last and rank == 0:
            for evaluation in evaluations:
                metrics |= evaluation(model, device)
        if rank == 0:
            scores = "".join(f"  {k} {v:.4f}" for k, v in metrics.items() if k.endswith("_accuracy"))
            log.info("fine-tuning epoch %d/%d  loss %.4f  %.0f img/s%s", epoch + 1, config.train.epochs,
                     metrics["loss"], metrics["images_per_s"], scores)
        rng = gather_objects(rng_state(device))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step, "rng": rng,
                 "config": config.to_dict(), "spec": spec.to_dict(), "metrics": metrics}
        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                save_checkpoint(Path(directory) / CHECKPOINT_FILE, state)
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=report_checkpoint)
