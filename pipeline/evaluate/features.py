"""Frozen-encoder features of whole splits, computed where the encoder trained.

One pass over a rank's share of a split (every sample exactly once across the ranks, see
:func:`~pipeline.data.plan.evaluation_share`) gives every representation evaluation needs: the encoder's
features, a randomly initialised copy's, the raw pixels (uint8, downsampled when the baseline's plan says so).
On Ray Train workers :class:`WorkerFeatures` runs after the last epoch on every rank and writes each rank's share as
``.npy`` files into the run's folder, the encoders' features in half precision; the driver joins them in sample
order and memory-maps them (:meth:`WorkerFeatures.gather`).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from augment.presets import to_unit_float
from pipeline import storage
from pipeline.console import duration
from pipeline.data import LabeledShards
from pipeline.distributed import position
from pipeline.errors import SslpipeError
from pipeline.evaluate.feature_files import half_if_fits, join_rows
from pipeline.evaluate.pixels import pixel_rows
from pipeline.models import build_encoder
from pipeline.train.amp import autocast_wanted, precision_name

log = logging.getLogger(__name__)
CPU_FORWARD_BATCH = 64  # images per encoder call on CPUs, where small batches stay in cache: the small CNN takes
# 0.28 ms a Fashion-MNIST image in calls of 64 and 0.49 ms in calls of 1024 (1.6 and 2.9 ms at 64 px)
SPLITS = ("train", "test")
JOINED = "joined-"  # the prefix of the driver's joined files
ENCODER, RANDOM_ENCODER, PIXELS = "encoder", "random_encoder", "pixels"


@dataclass
class SplitFeatures:
    """One split's ``labels (N,)`` and sample ``indices (N,)`` (int64) and, by kind, ``features (N, D)``: float32
    or float16 for encoders (:meth:`WorkerFeatures.shares`), uint8 for pixels; numpy arrays or memory maps."""

    labels: np.ndarray
    indices: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def in_sample_order(self) -> SplitFeatures:
        """Rows sorted by sample index (stable): the same order however many ranks and loader workers read them."""
        order = np.argsort(self.indices, kind="stable")
        if np.array_equal(order, np.arange(len(order))):
            return self
        return SplitFeatures(self.labels[order], self.indices[order], {k: v[order] for k, v in self.features.items()})


def inference_copy(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` in eval mode with every BatchNorm that follows a convolution folded into it (the same
    function in fewer passes over the activations: a fifth less time for the small CNN on CPUs); ``encoder`` itself
    in eval mode where torch.fx cannot trace it."""
    from torch.fx.experimental.optimization import fuse

    encoder.eval()
    try:
        return fuse(encoder)
    except Exception:
        return encoder


@torch.no_grad()
def split_features(
    encoders: Mapping[str, nn.Module],
    shards: LabeledShards,
    split: str,
    *,
    pixels: bool = False,
    pixel_side: int | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    autocast: bool = False,
) -> SplitFeatures:
    """``rank``'s share of ``split`` in one pass: each of ``encoders``' features (by name; computed under bf16
    autocast with ``autocast``, stored as float32) and, with ``pixels``, the pixels (at ``pixel_side``, default
    their own: :func:`~pipeline.evaluate.pixels.pixel_rows`)."""
    device = torch.device(device)
    loader = shards.loader(split, rank, world_size, pin_memory=device.type == "cuda")
    encoders = {
        name: inference_copy(encoder).to(device, memory_format=torch.channels_last)
        for name, encoder in encoders.items()
    }
    forward_batch = CPU_FORWARD_BATCH if device.type == "cpu" else shards.batch_size
    kinds = [*encoders, *([PIXELS] if pixels else [])]
    parts: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    labels, indices = [], []
    for images, batch_labels, batch_indices in loader:
        x = to_unit_float(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        for name, encoder in encoders.items():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                codes = torch.cat([encoder(part) for part in x.split(forward_batch)])
            parts[name].append(codes.float().cpu().numpy())
        if pixels:
            parts[PIXELS].append(pixel_rows(images, pixel_side or images.shape[-1]).numpy())
        labels.append(batch_labels.numpy())
        indices.append(batch_indices.numpy())
    if not labels:  # an empty share
        empty = np.zeros(0, dtype=np.int64)
        return SplitFeatures(empty, empty, {kind: np.zeros((0, 0), np.float32) for kind in kinds})
    return SplitFeatures(
        np.concatenate(labels),
        np.concatenate(indices),
        {kind: np.concatenate(chunks) for kind, chunks in parts.items()},
    )


def extract_features(
    encoder: nn.Module | None,
    shards: LabeledShards,
    split: str,
    device: torch.device | str = "cpu",
    autocast: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D) float32, labels (N,) int64)`` for every sample of ``split`` in sample order, in this
    process (under bf16 autocast with ``autocast``); ``encoder=None`` gives raw pixels in [0, 1], flattened
    ``(N, C*H*W)``."""
    if encoder is None:
        part = split_features({}, shards, split, pixels=True, device=device).in_sample_order()
        return part.features[PIXELS].astype(np.float32) / 255, part.labels
    part = split_features({ENCODER: encoder}, shards, split, device=device, autocast=autocast).in_sample_order()
    return part.features[ENCODER], part.labels


@dataclass(frozen=True)
class WorkerFeatures:
    """``worker_features(method, device)``: on every Ray Train rank after the last epoch, the rank's share of both
    splits of ``shards`` (the method's encoder; with ``random_seed``, a copy initialised from that seed; with
    ``pixels``, the pixels at ``pixel_side``), written as ``.npy`` files into ``folder`` (a folder or URL). The
    encoders run in bf16 autocast where ``amp`` (``train.amp``) says the rank's device would train in it.
    Picklable: made where the job is configured, handed to training; the driver then calls :meth:`gather`."""

    shards: LabeledShards
    random_seed: int | None = None
    pixels: bool = False
    pixel_side: int | None = None
    amp: bool | str = False
    folder: str = ""

    def encoders(self, method: nn.Module) -> dict[str, nn.Module]:
        """The method's encoder and, with ``random_seed``, a randomly initialised copy (the global generator
        untouched)."""
        encoders = {ENCODER: method.encoder}
        if self.random_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_seed)
                encoders[RANDOM_ENCODER] = build_encoder(method.spec)[0]
        return encoders

    def autocast(self, device: torch.device) -> bool:
        """Whether the encoders run in bf16 autocast on ``device`` (``train.amp`` there)."""
        return autocast_wanted(self.amp, device)

    def shares(self, method: nn.Module, device: torch.device, rank: int, world_size: int) -> dict[str, SplitFeatures]:
        """This rank's share of every split, in memory, in sample order, the encoders' features in half precision
        (:func:`~pipeline.evaluate.feature_files.half_if_fits`)."""
        encoders, autocast = self.encoders(method), self.autocast(device)
        shares = {}
        for split in SPLITS:
            share = split_features(
                encoders,
                self.shards,
                split,
                pixels=self.pixels,
                pixel_side=self.pixel_side,
                device=device,
                rank=rank,
                world_size=world_size,
                autocast=autocast,
            ).in_sample_order()
            for kind in encoders:
                share.features[kind] = half_if_fits(share.features[kind], f"the {kind}'s features of {split}")
            shares[split] = share
        return shares

    def __call__(
        self, method: nn.Module, device: torch.device, rank: int | None = None, world_size: int | None = None
    ) -> None:
        here = position()
        rank, world_size = here[0] if rank is None else rank, here[1] if world_size is None else world_size
        started = time.perf_counter()
        was_training = method.training
        shares = self.shares(method, device, rank, world_size)
        method.train(was_training)
        for split, share in shares.items():
            columns = {"labels": share.labels, "indices": share.indices, **share.features}
            for kind, array in columns.items():
                with storage.atomic_writer(self.folder, f"{split}-{kind}-{rank:04d}.npy") as handle:
                    np.save(handle, array)
        seconds = time.perf_counter() - started
        summary = {"world_size": world_size, "seconds": seconds, "rows": {s: len(f.labels) for s, f in shares.items()}}
        with storage.atomic_writer(self.folder, f"rank-{rank:04d}.json") as handle:  # last: the share is complete
            handle.write(json.dumps(summary).encode())
        if rank == 0:
            log.info(
                "evaluation: features of %s on rank 0 of %d done in %s (%s)",
                self.shards.location,
                world_size,
                duration(seconds),
                precision_name(self.autocast(device)),
            )

    def clear(self, into: Path | None = None) -> None:
        """Remove the files of ``folder`` (what an earlier attempt left, or this one's once evaluated) and the
        joined ones in ``into``."""
        storage.remove(self.folder, storage.names(self.folder, "*"))
        for joined in Path(into).glob(f"{JOINED}*.npy") if into else ():
            joined.unlink()

    def _load(self, name: str) -> np.ndarray:
        return np.load(io.BytesIO(storage.read_bytes(storage.join(self.folder, name))))

    def gather(self, into: Path | None = None) -> tuple[dict[str, SplitFeatures], float]:
        """``({split: features of every rank in sample order}, seconds of the slowest rank)``: each column's rank
        files joined into one ``.npy`` (:func:`~pipeline.evaluate.feature_files.join_rows`) and memory-mapped,
        beside them when ``folder`` is local, else in ``into`` (a local folder); :meth:`clear` removes them."""
        summaries = [
            json.loads(storage.read_bytes(storage.join(self.folder, name)))
            for name in storage.names(self.folder, "rank-*.json")
        ]
        world_size = summaries[0]["world_size"] if summaries else 0
        if not summaries or len(summaries) != world_size:
            raise SslpipeError(
                f"{self.folder}: features of {len(summaries)} of {world_size or 'the'} ranks; the "
                "Ray Train workers did not finish their evaluation pass (see their log above)"
            )
        if into is None and not storage.is_local(self.folder):
            raise ValueError(f"{self.folder} is not a local folder: gather(into=) names where to join the files")
        target = storage.local_path(self.folder) if storage.is_local(self.folder) else Path(into)
        kinds = [
            "labels",
            "indices",
            ENCODER,
            *([RANDOM_ENCODER] if self.random_seed is not None else []),
            *([PIXELS] if self.pixels else []),
        ]
        splits = {}
        for split in SPLITS:
            files = {kind: [f"{split}-{kind}-{rank:04d}.npy" for rank in range(world_size)] for kind in kinds}
            indices = np.concatenate([self._load(name) for name in files["indices"]])
            positions = np.empty_like(indices)
            positions[np.argsort(indices, kind="stable")] = np.arange(len(indices))  # each row's place in sample order
            columns = {
                kind: join_rows(
                    [storage.join(self.folder, name) for name in names],
                    target / f"{JOINED}{split}-{kind}.npy",
                    positions,
                )
                for kind, names in files.items()
            }
            splits[split] = SplitFeatures(columns.pop("labels"), columns.pop("indices"), columns)
        return splits, max(s["seconds"] for s in summaries)
