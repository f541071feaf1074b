"""A class-balanced labeled subset of a split, as in SimCLR's semi-supervised protocol (Chen et al. 2020: 1% and
10% of ImageNet's labels, the same number of images per class), written as a shard set of its own so that training
reads it as it reads any shards (ranks, exact epochs, photos decoded where training runs).

The choice is a pure function of the split's labels in source order (:func:`balanced_subset`); each class's images
are taken in an order drawn from ``(seed, class)``, so the subset of a smaller fraction lies inside that of a larger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from pipeline import storage
from pipeline.data.array_shards import TAR_MTIME, HashingWriter, clear_previous
from pipeline.data.codec import encode_group
from pipeline.data.decode import EncodedImages, PhotoViews, every_photo
from pipeline.data.loader import ShardLoader
from pipeline.data.manifest import Manifest, ShardInfo, SplitInfo, read_manifest, write_manifest
from pipeline.errors import ConfigError, ShardError

READ_BATCH = 1024
PNG_MAGIC = b"\x89PNG"


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions int64 ``(n,)`` into ``labels`` ``(N,)``: ``round(fraction * N / K)`` images (at least 1)
    of each of the ``K`` classes present, all of a class that has fewer; negative labels (unlabeled) are never
    chosen and not counted in ``N``. Class ``c`` contributes the first of its positions in an order drawn from
    ``(seed, c)``, so for the same seed a smaller fraction's subset lies inside a larger one's."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels[labels >= 0])
    if not len(classes):
        raise ConfigError("no labeled images to choose from")
    per_class = max(1, round(fraction * int((labels >= 0).sum()) / len(classes)))
    chosen = [np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(labels == c))[:per_class]
              for c in classes]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _reader(location: str, manifest: Manifest, split: str, url_template: str | None) -> ShardLoader:
    """Every sample of ``split`` once, in shard order, in this process; photos as their undecoded bytes."""
    return ShardLoader(location, split, READ_BATCH, rank=0, world_size=1, num_workers=0, shuffle=False,
                       drop_last=False, url_template=url_template, manifest=manifest,
                       views=PhotoViews(1) if manifest.photos else None, encoded=every_photo)


class _SubsetShards:
    """Writes chosen samples to ``{split}-{i:06d}.tar`` shards of ``samples_per_shard`` in ``out``, in the layout
    of the source: chunks of ``per_member`` arrays, or one photo (its bytes as they were) per sample."""

    def __init__(self, out: str, split: str, manifest: Manifest, samples_per_shard: int) -> None:
        self.out, self.split, self.manifest, self.samples_per_shard = out, split, manifest, samples_per_shard
        self.shards: list[ShardInfo] = []
        self.pending: list[tuple[np.ndarray | list[bytes], np.ndarray, np.ndarray]] = []

    def add(self, images: np.ndarray | list[bytes], labels: np.ndarray, indices: np.ndarray) -> None:
        """``images`` uint8 ``(n, H, W, C)`` or the photos' bytes, ``labels`` and ``indices`` ``(n,)``."""
        if len(labels):
            self.pending.append((images, labels, indices))
        while sum(len(p[1]) for p in self.pending) >= self.samples_per_shard:
            self._write(self.samples_per_shard)

    def close(self) -> list[ShardInfo]:
        if self.pending:
            self._write(sum(len(p[1]) for p in self.pending))
        return self.shards

    def _take(self, count: int) -> tuple[np.ndarray | list[bytes], np.ndarray, np.ndarray]:
        columns = list(zip(*self.pending))
        images = ([b for part in columns[0] for b in part] if self.manifest.photos
                  else np.concatenate(columns[0]))
        labels, indices = np.concatenate(columns[1]), np.concatenate(columns[2])
        rest = (images[count:], labels[count:], indices[count:])
        self.pending = [rest] if len(rest[1]) else []
        return images[:count], labels[:count], indices[:count]

    def _write(self, count: int) -> None:
        images, labels, indices = self._take(count)
        name = f"{self.split}-{len(self.shards):06d}.tar"
        per_member = self.manifest.images_per_member
        with storage.atomic_writer(self.out, name) as handle:
            hashing = HashingWriter(handle)
            with wds.TarWriter(hashing, encoder=False, mtime=TAR_MTIME) as writer:
                for sample in self._samples(images, labels, indices, per_member):
                    writer.write(sample)
        counts = np.bincount(labels, minlength=len(self.manifest.class_names))
        self.shards.append(ShardInfo(name, count, hashing.size, hashing.digest.hexdigest(), tuple(counts.tolist())))

    def _samples(self, images: np.ndarray | list[bytes], labels: np.ndarray, indices: np.ndarray,
                 per_member: int) -> Iterator[dict]:
        if self.manifest.photos:
            for blob, label, index in zip(images, labels.tolist(), indices.tolist()):
                kind = "png" if blob[:4] == PNG_MAGIC else "jpg"
                yield {"__key__": f"{self.split}-{index:08d}", kind: blob, "cls": str(label).encode()}
            return
        for first in range(0, len(labels), per_member):
            part = slice(first, first + per_member)
            yield encode_group(self.split, images[part], labels[part], indices[part], self.manifest.encoding, first)


def write_subset(
    location: str | Path, out: str | Path, fraction: float, seed: int, *, split: str = "train",
    url_template: str | None = None, samples_per_shard: int = 4096, overwrite: bool = True,
) -> Manifest:
    """Write the :func:`balanced_subset` of ``split`` of the labeled shards at ``location`` to folder or URL
    prefix ``out`` as shards with a manifest of that one split (the source's channel statistics, image layout and
    classes kept; ``extra`` names the source, its manifest's sha256, the fraction and the seed). Two reads of the
    split: its labels, then the chosen samples (array chunks decoded and re-encoded, photos copied byte for byte)."""
    location, out = str(location), str(out)
    manifest = read_manifest(location)
    if not manifest.labeled:
        raise ConfigError(f"{location} holds unlabeled images; a labeled subset needs labeled shards")
    labels, indices = [], []
    for _, batch_labels, batch_indices in _reader(location, manifest, split, url_template):
        labels.append(batch_labels.numpy())
        indices.append(batch_indices.numpy())
    labels, indices = np.concatenate(labels), np.concatenate(indices)
    order = np.argsort(indices, kind="stable")  # source order, whatever the shard layout
    chosen = indices[order][balanced_subset(labels[order], fraction, seed)]
    clear_previous(out, overwrite)
    writer = _SubsetShards(out, split, manifest, samples_per_shard)
    for images, batch_labels, batch_indices in _reader(location, manifest, split, url_template):
        keep = np.isin(batch_indices.numpy(), chosen)
        rows = np.flatnonzero(keep)
        if isinstance(images, EncodedImages):
            blobs = images.blobs()
            picked: np.ndarray | list[bytes] = [bytes(blobs[i].numpy()) for i in rows]
        else:
            picked = images[torch.from_numpy(rows)].permute(0, 2, 3, 1).numpy()
        writer.add(picked, batch_labels.numpy()[keep], batch_indices.numpy()[keep])
    shards = writer.close()
    if sum(s.num_samples for s in shards) != len(chosen):
        raise ShardError(f"{location}: read {sum(s.num_samples for s in shards)} of the {len(chosen)} chosen samples "
                         f"of {split!r}; shards changed while reading, re-create them")
    subset = dataclasses.replace(
        manifest, splits={split: SplitInfo(len(chosen), tuple(shards))},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), rejects=(),
        extra={**manifest.extra, "subset_of": location, "subset_of_sha256": manifest.digest(),
               "fraction": fraction, "seed": seed},
    )
    write_manifest(subset, out)
    return subset

