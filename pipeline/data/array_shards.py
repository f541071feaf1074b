"""``sslpipe shard``: write a source as WebDataset tar shards plus ``manifest.json``.

Samples are stored in a seeded random order (so class-sorted sources such as image folders do not give
single-class shards). Every shard is written under a temporary name and renamed; the manifest is written last
and removed first, so a folder with a manifest always holds whole shards.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np
import webdataset as wds
from tqdm import tqdm

from pipeline import __version__, storage
from pipeline.data.codec import ENCODINGS, encode_group
from pipeline.data.manifest import MANIFEST, Manifest, ShardInfo, SplitInfo, write_manifest
from pipeline.data.sources import Source, SourceSplit
from pipeline.errors import ConfigError, ShardError

SMALL_IMAGE_BYTES = 64 * 64 * 3  # images up to this size are stored in chunks of many images per tar member
CHUNK = 256
TAR_MTIME = 0  # fixed so that the same source and seed give byte-identical shards (an int: a float needs a
# 1 KiB PAX header per member)


def default_images_per_member(image_shape: tuple[int, int, int]) -> int:
    return CHUNK if math.prod(image_shape) <= SMALL_IMAGE_BYTES else 1


class ChannelStats:
    """Running per-channel mean and std of images scaled to [0, 1]."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.total = np.zeros(channels)
        self.total_sq = np.zeros(channels)

    def update(self, images: np.ndarray) -> None:
        pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        self.count += len(pixels)
        self.total += pixels.sum(0)
        self.total_sq += (pixels**2).sum(0)

    def result(self) -> tuple[list[float], list[float]]:
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 0.0))
        return mean.round(6).tolist(), std.round(6).tolist()


class HashingWriter:
    """Write-through file wrapper that counts bytes and hashes them (sha256) on the way."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.size, self.digest = handle, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def _write_shard(
    out: str | Path, name: str, split: str, data: SourceSplit, order: np.ndarray, encoding: str, per_member: int,
    num_classes: int, stats: ChannelStats | None, progress: tqdm,
) -> ShardInfo:
    class_counts = np.zeros(num_classes, dtype=np.int64)
    with storage.atomic_writer(out, name) as handle:
        hashing = HashingWriter(handle)
        with wds.TarWriter(hashing, encoder=False, mtime=TAR_MTIME) as writer:
            for first in range(0, len(order), per_member):
                indices = order[first : first + per_member]
                images, labels = data.load(indices)
                if stats is not None:
                    stats.update(images)
                class_counts += np.bincount(labels[labels >= 0], minlength=num_classes)[:num_classes]
                writer.write(encode_group(split, images, labels, indices, encoding, first))
                progress.update(len(indices))
    return ShardInfo(name, len(order), hashing.size, hashing.digest.hexdigest(), tuple(class_counts.tolist()))


def clear_previous(out: str | Path, overwrite: bool) -> None:
    """Refuse to write over finished shards unless ``overwrite``; then remove the manifest first (so an
    interrupted rewrite never looks whole), old shards and temporary files, in a folder or under a URL prefix."""
    if storage.names(out, MANIFEST):
        if not overwrite:
            raise ShardError(f"{out} already holds shards ({MANIFEST}); pass --overwrite to replace them")
        storage.remove(out, [MANIFEST])
    storage.remove(out, storage.names(out, "*-[0-9][0-9][0-9][0-9][0-9][0-9].tar") + storage.names(out, ".*.tmp"))


def write_shards(
    source: Source,
    out: str | Path,
    *,
    samples_per_shard: int = 4096,
    encoding: str = "png",
    images_per_member: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Manifest:
    """Write ``{split}-{i:06d}.tar`` shards of every split of ``source`` into ``out`` and return the manifest."""
    if encoding not in ENCODINGS:
        raise ConfigError(f"unknown encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}")
    if samples_per_shard < 1:
        raise ConfigError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    image_shape = source.splits["train"].image_shape
    per_member = images_per_member or default_images_per_member(image_shape)
    clear_previous(out, overwrite)
    stats = ChannelStats(image_shape[-1])
    splits = {}
    total = sum(split.num_samples for split in source.splits.values())
    with tqdm(total=total, unit="img", desc=f"shard {source.name}", disable=not progress) as bar:
        for split_index, (split, data) in enumerate(source.splits.items()):
            if data.image_shape != image_shape:
                raise ShardError(f"{source.name}: {split} images are {data.image_shape}, train images {image_shape}")
            order = np.random.default_rng([seed, split_index]).permutation(data.num_samples)
            shards = [
                _write_shard(
                    out, f"{split}-{i:06d}.tar", split, data, order[start : start + samples_per_shard], encoding,
                    per_member, len(source.class_names), stats if split == "train" else None, bar,
                )
                for i, start in enumerate(range(0, data.num_samples, samples_per_shard))
            ]
            splits[split] = SplitInfo(data.num_samples, tuple(shards))
    mean, std = stats.result()
    height, width, channels = image_shape
    manifest = Manifest(
        source={"name": source.name, **source.details},
        splits=splits,
        image_shape=(channels, height, width),
        encoding=encoding,
        images_per_member=per_member,
        class_names=tuple(source.class_names),
        channel_mean=tuple(mean),
        channel_std=tuple(std),
        order_seed=seed,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        writer_version=__version__,
    )
    write_manifest(manifest, out)
    return manifest
