"""The streaming loader: one training rank's batches from WebDataset shards, and evaluation's reading of labeled
shards (every sample once).

Photo shards (``manifest.photos``) become crops of :class:`PhotoViews` decoded in the loader workers, or, for
decoding on a GPU (``encoded``), batches of undecoded bytes (:class:`EncodedImages`), with crops of the photos the
GPU's decoder does not suit.

Shards are split by rank (:func:`pipeline.distributed.position`: ``torch.distributed``, else Ray Train's world
rank, else ``RANK``/``WORLD_SIZE``), then by DataLoader worker; see :mod:`pipeline.data.plan` for the epoch
semantics and what a split's shards hold, :mod:`pipeline.data.stream` for what each loader process does. The main
process merges the workers' last partial batches and stops after exactly ``len(loader)`` batches.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from pipeline.data.decode import PhotoViews
from pipeline.data.manifest import Manifest, read_manifest
from pipeline.data.plan import batches_per_rank, split_plan
from pipeline.data.reading import Skipped
from pipeline.data.stream import Batch, ShardStream, Transform, WorkerFailure, concat, rows, take
from pipeline.distributed import position
from pipeline.errors import ConfigError, ShardError

log = logging.getLogger(__name__)
SHUFFLE_BUFFER_BYTES = 64 << 20
SHARED_MEMORY = "/dev/shm"
REFILL_PASSES = 2  # skip mode: extra reads (of the next ranks' stretches) to make up for skipped samples


class ShardLoader:
    """One rank's epoch of batches ``(images, labels (B,), indices (B,))`` from a shard folder: images uint8
    ``(B, C, H, W)``; for photo shards crops of ``views`` (see :class:`ShardStream`; labels ``-1`` when unlabeled),
    or :class:`EncodedImages` holding undecoded the photos for which ``encoded(bytes)`` is true (the training process
    decodes them on its GPU: :func:`~pipeline.data.decode.device_reads`) and crops of the others.
    A ``transform`` (CPU training: the augmentation) turns each batch of photo crops into its views in the loader
    processes, which then yield them as float ``(B, count, 3, S, S)``; its random numbers come from torch's
    generator, which the DataLoader seeds for each worker from the training process's.

    ``location`` is a shard folder or URL prefix holding ``manifest.json``; ``url_template`` (e.g.
    ``"pipe:aws s3 cp s3://bucket/shards/{name} -"``) overrides how shard names become URLs. Every rank yields
    ``len(loader)`` batches of exactly ``batch_size`` (with ``drop_last``). Call :meth:`set_epoch` before each
    epoch to reshuffle. Samples of ``exclude_classes`` (label indices) are left out, e.g. to train an anomaly
    detector on normal data only; the epoch plan counts what is left. With ``skip_bad_samples``, samples that
    cannot be decoded (and the rest of a shard that breaks off) are left out with a warning instead of failing the
    epoch, and counted in ``skipped``.
    """

    def __init__(
        self,
        location: str | Path,
        split: str = "train",
        batch_size: int = 256,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 2,
        mode: str = "exact",
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int | None = None,
        drop_last: bool = True,
        pin_memory: bool = False,
        prefetch_factor: int = 4,
        url_template: str | None = None,
        manifest: Manifest | None = None,
        exclude_classes: Sequence[int] = (),
        skip_bad_samples: bool = False,
        views: PhotoViews | None = None,
        encoded: Callable[[bytes], bool] | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.manifest = manifest or read_manifest(location)
        if self.manifest.photos and views is None:
            raise ConfigError(f"{location} holds photos: give the size to crop them to (data.image_size)")
        self.plan = split_plan(str(location), self.manifest, split, url_template, exclude_classes)
        self.views = views if self.manifest.photos else None
        detected = position()
        self.rank = detected[0] if rank is None else rank
        self.world_size = detected[1] if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside world size {self.world_size}")
        self.batch_size, self.mode, self.shuffle, self.seed, self.drop_last = batch_size, mode, shuffle, seed, drop_last
        fitting = SHUFFLE_BUFFER_BYTES // self.plan.image_bytes
        self.shuffle_buffer = shuffle_buffer or max(batch_size, min(8192, fitting))
        self.encoded = encoded if self.manifest.photos else None
        self.transform = transform if self.manifest.photos and self.encoded is None else None
        self.shared_memory_checked = False
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.location, self.split, self.epoch = str(location), split, 0
        self.skip_bad_samples, self.skipped = skip_bad_samples, 0  # skipped: bad samples of the last epoch read
        kept = sum(self.plan.kept_counts)
        if len(self) == 0 and (drop_last or not kept):  # (an evaluation rank's share may be empty)
            raise ConfigError(f"split {split!r} of {location} has {kept} samples: too few for {self.world_size} "
                              f"rank(s) x batch_size {batch_size}; lower batch_size or use more data")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batches_per_rank(self.plan.kept_counts, self.world_size, self.batch_size, self.mode, self.drop_last,
                                self.rank)

    def batch_bytes(self) -> int:
        """About how many bytes one batch takes as the loader processes hand it over."""
        if not self.manifest.photos:
            return self.batch_size * self.plan.image_bytes
        if self.encoded is not None:
            return self.batch_size * 2 * self.manifest.image_sizes["mean_bytes"]  # rows padded to the longest
        pixels = self.batch_size * self.views.count * 3 * self.views.size**2
        return pixels * (4 if self.transform is not None else 1)

    def check_shared_memory(self, shm: str = SHARED_MEMORY) -> None:
        """Loader processes hand batches over through ``shm``; in a container it is often 64 MiB, and running out
        there kills a worker with a bus error. Refuse to start when the batches in flight would not fit."""
        if not self.num_workers or not Path(shm).is_dir():
            return
        needed = self.batch_bytes() * self.num_workers * (self.prefetch_factor + 1)
        free = shutil.disk_usage(shm).free
        if needed > free:
            raise ConfigError(
                f"{shm} has {free >> 20} MiB free, but {self.num_workers} loader processes x "
                f"{self.prefetch_factor + 1} batches of {self.batch_bytes() >> 20} MiB need {needed >> 20} MiB: give "
                "the container more shared memory (docker run --shm-size=8g, or a memory-backed /dev/shm volume in "
                "Kubernetes) or lower data.num_workers or data.batch_size"
            )

    def _items(self, refill: int) -> Iterator[Batch | Skipped | WorkerFailure]:
        """The DataLoader's items; closing this generator stops its workers at once (left to the garbage
        collector, their shutdown can wait out a 5 s timeout per worker)."""
        if not self.shared_memory_checked:
            self.check_shared_memory()
            self.shared_memory_checked = True
        stream = ShardStream(
            self.plan, self.batch_size, self.rank, self.world_size, self.mode, self.epoch, self.seed, self.shuffle,
            self.shuffle_buffer, self.skip_bad_samples, refill, self.views, self.transform, self.drop_last,
            self.encoded,
        )
        yield from DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        """``len(self)`` batches. With ``skip_bad_samples`` and ``drop_last`` (training), a rank that came up short
        because samples were skipped reads the next rank's stretch of the epoch (its own again with one rank), in
        another order, for the missing batches: every rank still yields the same number of batches, so DDP never
        waits on a rank that ran dry (some samples are then read twice in that epoch)."""
        limit, emitted = len(self), 0
        self.skipped = 0
        if limit == 0:
            return
        passes = 1 + (REFILL_PASSES if self.skip_bad_samples and self.drop_last else 0)
        for refill in range(passes):
            with contextlib.closing(self._items(refill)) as items:  # also when a worker fails or we stop early
                for batch in self._equal_batches(items, limit - emitted, first_pass=refill == 0):
                    emitted += 1
                    yield batch
            if emitted >= limit or (self.skip_bad_samples and not self.drop_last):  # evaluation: what is left
                return
        what = f"skipped {self.skipped} bad samples and " if self.skipped else ""
        raise ShardError(
            f"{self.location}: rank {self.rank} {what}read {emitted} batches of {self.split!r} but the manifest "
            f"promises {limit}; shards changed since `sslpipe shard`, re-create them"
        )

    def note(self, skipped: Skipped) -> None:
        """Count ``skipped`` among this epoch's bad samples, with a warning."""
        self.skipped += skipped.count
        log.warning("skipped %d bad samples of %s", skipped.count, skipped.reason)

    def _equal_batches(
        self, items: Iterator[Batch | Skipped | WorkerFailure], limit: int, first_pass: bool
    ) -> Iterator[Batch]:
        """Pass full batches through, merge the workers' partial ones, stop after ``limit`` batches; the rest of
        the first pass of an exact epoch in skip mode is still read for its notes of skipped samples."""
        carry: list[Batch] = []
        emitted = 0
        drain = first_pass and self.skip_bad_samples and self.mode == "exact"
        for item in items:
            if isinstance(item, WorkerFailure):
                raise ShardError(item.message)
            if isinstance(item, Skipped):
                if first_pass:
                    self.note(item)
                continue
            if emitted == limit:
                continue
            if rows(item[0]) < self.batch_size:
                carry.append(item)
                if sum(rows(c[0]) for c in carry) < self.batch_size:
                    continue
                merged = concat(carry)
                item = take(merged, slice(None, self.batch_size))
                carry = [take(merged, slice(self.batch_size, None))] if rows(merged[0]) > self.batch_size else []
            emitted += 1
            yield item
            if emitted == limit and not drain:
                return
        if carry and not self.drop_last and emitted < limit:
            yield concat(carry)


def evaluation_loader(
    location: str | Path, split: str, batch_size: int, *, image_size: int | None = None,
    url_template: str | None = None, skip_bad_samples: bool = False, num_workers: int = 1, rank: int = 0,
    world_size: int = 1, pin_memory: bool = False,
) -> ShardLoader:
    """Evaluation's loader: every (readable) sample of ``split`` once across ``world_size`` ranks, ``rank``
    reading its contiguous share of whole batches in shard order (see :func:`~pipeline.data.plan.evaluation_share`;
    with several ``num_workers`` the loader processes' batches interleave: sort by the samples' indices), the
    split's last batch partial; photos are center crops of ``image_size``."""
    views = PhotoViews(image_size) if image_size else None
    return ShardLoader(location, split, batch_size, rank=rank, world_size=world_size, num_workers=num_workers,
                       shuffle=False, drop_last=False, url_template=url_template, skip_bad_samples=skip_bad_samples,
                       views=views, pin_memory=pin_memory)


@dataclass(frozen=True)
class LabeledShards:
    """Labeled shards that evaluation reads and how: ``batch_size`` images a batch, photos as center crops of
    ``image_size``, ``num_workers`` loader processes. Picklable: made where the job is configured."""

    location: str
    batch_size: int = 1024
    image_size: int | None = None
    url_template: str | None = None
    skip_bad_samples: bool = False
    num_workers: int = 0

    def loader(self, split: str, rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> ShardLoader:
        """:func:`evaluation_loader` of ``split``: ``rank``'s share of every readable sample."""
        return evaluation_loader(self.location, split, self.batch_size, image_size=self.image_size,
                                 url_template=self.url_template, skip_bad_samples=self.skip_bad_samples,
                                 num_workers=self.num_workers, rank=rank, world_size=world_size, pin_memory=pin_memory)
