"""The Ray Train worker loop, shared by every method, and the driver that configures ``TorchTrainer``.

Each epoch every rank reads its share of the shards, augments on its own device, steps the optimizer, then all
ranks call ``ray.train.report`` once (rank 0 with the checkpoint), and Ray Train's controller logs the epoch to
MLflow once the checkpoint is stored (``pipeline.epoch_log``). A rerun with the same ``train.name`` and
``train.storage_path`` resumes from the last checkpoint, as does Ray after a worker failure.
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from augment import ViewAugmenter
from pipeline.config import JobConfig
from pipeline.data import ShardLoader, storage
from pipeline.data.manifest import Manifest
from pipeline.distributed import gather_objects, mean_across_ranks, sum_across_ranks
from pipeline.errors import ConfigError, SslpipeError
from pipeline.evaluate.online import OnlineKnn
from pipeline.methods import Method, build_method
from pipeline.models import EncoderSpec
from pipeline.optim import build_optimizer
from pipeline.schedules import warmup_cosine

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
NODES_KEY = "worker_nodes"  # rank 0 reports the Ray node id of each rank under this key, beside its metrics
NODES_TAG = "sslpipe.worker_nodes"  # ... and pipeline.epoch_log sets it as this MLflow tag


class NonFiniteLoss(SslpipeError):
    """The loss became NaN or infinite."""


def encoder_spec(config: JobConfig, manifest: Manifest) -> EncoderSpec:
    channels, height, width = manifest.image_shape
    if height != width:
        raise ConfigError(f"{config.data.shards}: images are {height}x{width}; encoders expect square images")
    return EncoderSpec(
        arch=config.model.encoder, channels=channels, image_size=height, mean=manifest.channel_mean,
        std=manifest.channel_std, width=config.model.width, embed_dim=config.model.embed_dim,
        cifar_stem=config.model.cifar_stem,
    )


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary name, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(directory: str | Path) -> dict:
    path = Path(directory) / CHECKPOINT_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SslpipeError(f"{path}: checkpoint file missing; delete the run's folder to start afresh") from None
    except Exception as exn:  # noqa: BLE001 - pickle, zip and torch errors all mean an unreadable file
        raise SslpipeError(f"{path}: unreadable checkpoint ({exn}); delete it to start afresh") from None


def restore_state(checkpoint: Any) -> dict:
    """The state in Ray Train ``checkpoint``; if that file is unreadable, the state of the newest readable
    checkpoint before it in the same run folder (Ray keeps ``num_to_keep`` of them), with a warning naming the
    bad one. Raises naming every unreadable file when none is left."""
    import pyarrow.fs
    from ray.train import Checkpoint

    folder = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    found = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(folder))
    earlier = sorted((info.path for info in found if info.type == pyarrow.fs.FileType.Directory
                      and info.base_name.startswith("checkpoint_") and info.path < checkpoint.path), reverse=True)
    errors = []
    for candidate in [checkpoint, *(Checkpoint(path, filesystem=checkpoint.filesystem) for path in earlier)]:
        try:
            with candidate.as_directory() as directory:
                state = load_checkpoint(directory)
        except SslpipeError as exn:
            errors.append(str(exn))
            continue
        if errors:
            log.warning("resuming from the earlier checkpoint %s: %s", candidate.path, "; ".join(errors))
        return state
    raise SslpipeError(f"{'; '.join(errors)}; no earlier checkpoint in {folder} is readable")


def load_trained_method(config: JobConfig, manifest: Manifest, state: dict) -> Method:
    """The method of ``config`` with the weights of checkpoint ``state``."""
    method = build_method(config, encoder_spec(config, manifest))
    method.load_state_dict(state["model"])
    return method


def steps_in(loader: ShardLoader, epochs: int, cap: int | None = None) -> list[int]:
    """Batches per epoch for ``epochs`` epochs (it can vary by one shard's worth between epochs), at most ``cap``."""
    counts = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        counts.append(len(loader) if cap is None else min(len(loader), cap))
    return counts


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, views: Sequence[torch.Tensor], autocast: bool
) -> float:
    """One optimizer step of ``model`` (a method or its DDP wrapper) on augmented ``views``; returns the loss
    (``loss.item()``: the step's one host sync)."""
    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with torch.autocast(views[0].device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(*views)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_worker(payload: dict) -> None:
    """``train_loop_per_worker``: ``payload`` holds the job config dict, the MLflow run id and tracking URI."""
    import ray
    import ray.train
    import ray.train.torch

    config = JobConfig.from_dict(payload["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(config.train.cpus_per_worker)
    torch.manual_seed(config.train.seed)  # the same initial weights on every rank (BYOL's target included)

    loader = ShardLoader(
        config.data.shards, "train", config.data.batch_size, num_workers=config.data.num_workers,
        mode=config.data.mode, seed=config.train.seed, url_template=config.data.url_template,
        pin_memory=device.type == "cuda", exclude_classes=config.data.exclude_classes,
        skip_bad_samples=config.data.skip_bad_samples,
    )
    spec = encoder_spec(config, loader.manifest)
    method = build_method(config, spec).to(memory_format=torch.channels_last)
    torch.manual_seed(config.train.seed + 1 + rank)
    if config.train.sync_batchnorm and world_size > 1:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    model = ray.train.torch.prepare_model(method)  # moves to device, wraps in DDP when world_size > 1
    augmenter = ViewAugmenter(config.augment.preset, spec.image_size, spec.channels, method.num_views,
                              seed=config.train.seed * 1000 + rank)
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
        augmenter.calls = step  # continue the augmentation stream instead of replaying it
    nodes = gather_objects(ray.get_runtime_context().get_node_id())  # where each rank runs (after a restart too)
    online_knn = None
    if rank == 0 and config.eval.online_knn > 0:
        online_knn = OnlineKnn(config.data.shards, config.eval.online_knn, config.eval.knn_k,
                               config.eval.knn_temperature, config.data.url_template, config.data.skip_bad_samples)

    for epoch in range(start_epoch, config.train.epochs):
        loader.set_epoch(epoch)
        model.train()
        started, loss_sum, images_seen = time.perf_counter(), 0.0, 0
        capped = config.train.max_steps_per_epoch is not None  # (uncapped, the loader ends the epoch itself)
        for images, _, _ in itertools.islice(loader, per_epoch[epoch]) if capped else loader:
            value = train_step(model, optimizer, augmenter(images.to(device, non_blocking=True)), autocast)
            if not math.isfinite(value):  # the epoch's checkpoint is never written
                raise NonFiniteLoss(
                    f"loss is {value} at epoch {epoch}, step {step} (rank {rank}); lower optim.lr "
                    f"(now {config.optim.lr}) or check the data in {config.data.shards}"
                )
            scheduler.step()
            step += 1
            method.after_step(step, total_steps)
            loss_sum += value
            images_seen += len(images)
        elapsed = time.perf_counter() - started
        epoch_images, skipped = sum_across_ranks(torch.tensor([images_seen, loader.skipped], device=device)).tolist()
        metrics = {
            "epoch": epoch,
            "step": step,
            "start_epoch": start_epoch,
            "loss": mean_across_ranks(loss_sum / max(1, per_epoch[epoch]), device),
            "lr": scheduler.get_last_lr()[0],
            "images": epoch_images,
            "images_per_s": epoch_images / elapsed,
            "skipped_samples": skipped,  # bad samples left out this epoch (data.skip_bad_samples), all ranks
            NODES_KEY: ",".join(nodes),  # a tag, not a metric (pipeline.epoch_log)
            **method.epoch_metrics(sum_across_ranks),
        }
        if online_knn is not None:
            metrics["online_knn_accuracy"] = online_knn(method.encoder, device)
        state = {
            "model": method.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1, "step": step, "config": config.to_dict(), "spec": method.spec.to_dict(),
            "metrics": metrics,
        }
        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                save_checkpoint(Path(directory) / CHECKPOINT_FILE, state)
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=report_checkpoint)


def _user_error(error: Exception) -> SslpipeError | None:
    """The first worker's own error (bad shard, NaN loss, ...) as one line, instead of Ray's wrapper."""
    for rank, failure in sorted(getattr(error, "worker_failures", {}).items()):
        if isinstance(failure, SslpipeError):
            return type(failure)(f"Ray Train worker {rank}: {failure.args[0]}")
    return None


def fit(
    config: JobConfig, run_name: str, run_id: str | None = None, tracking_uri: str | None = None,
    callbacks: Sequence[Any] = (), unsent: str | None = None,
) -> dict:
    """Run (or resume) ``train_worker`` on ``config.train.num_workers`` Ray Train workers; returns the final
    checkpoint's state (``model``, ``optimizer``, ``scheduler``, ``epoch``, ``step``, ``config``, ``spec`` and
    the last epoch's ``metrics``). With ``run_id``, each epoch is logged to that MLflow run, epochs the server
    could not take kept in the local file ``unsent``. ``callbacks`` are Ray Train callbacks (e.g. Tune's report
    forwarding)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.epoch_log import EpochMetricsToMlflow

    storage_path = config.train.storage_path  # a folder (made absolute: workers run elsewhere) or a URL
    if storage.is_local(storage_path):
        storage_path = str(storage.local_path(storage_path).absolute())
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config.to_dict(), "run_id": run_id, "tracking_uri": tracking_uri},
        scaling_config=ScalingConfig(
            num_workers=config.train.num_workers, use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker, **({"GPU": 1} if config.train.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name, storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(
                max_failures=config.train.max_failures, controller_failure_limit=config.train.start_attempts
            ),
            callbacks=[*([EpochMetricsToMlflow(tracking_uri, run_id, unsent)] if run_id else []), *callbacks],
        ),
    )
    try:
        result = trainer.fit()
    except Exception as error:  # Ray Train V2 raises TrainingFailedError; a worker's own error is the news
        user_error = _user_error(error)
        if user_error is None:
            raise
        raise user_error from error
    with result.checkpoint.as_directory() as directory:
        return load_checkpoint(directory)
