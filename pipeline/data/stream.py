"""Streaming loader: one training rank's uint8 batches from WebDataset shards.

Photo shards (``manifest.photos``) become crops of :class:`PhotoViews` decoded in the loader workers, or, for
decoding on a GPU (``decode_on_device``), batches of undecoded bytes (:class:`EncodedImages`).

Shards are split by rank (:func:`pipeline.distributed.position`: ``torch.distributed``, else Ray Train's world
rank, else ``RANK``/``WORLD_SIZE``), then by DataLoader worker; see :mod:`pipeline.data.plan` for the epoch
semantics.
Workers decode chunks into numpy arrays, shuffle them in a vectorised buffer and send whole batches; the main
process merges the workers' last partial batches and stops after exactly ``len(loader)`` batches.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from pipeline.data import storage
from pipeline.data.codec import decode_group, group_labels, photo_group
from pipeline.data.decode import EncodedImages, PhotoViews, UndecodablePhoto, photo_views
from pipeline.data.manifest import MANIFEST, Manifest, check_local_shards, read_manifest
from pipeline.data.plan import Piece, batches_per_rank, rank_pieces, worker_pieces
from pipeline.distributed import position
from pipeline.errors import ConfigError, ShardError, SslpipeError

log = logging.getLogger(__name__)
Images = torch.Tensor | EncodedImages
Batch = tuple[Images, torch.Tensor, torch.Tensor]
Group = tuple[np.ndarray, np.ndarray, np.ndarray]
Transform = Callable[[torch.Tensor], torch.Tensor]  # uint8 (b, count, 3, S, S) crops -> float views, same shape
SHUFFLE_BUFFER_BYTES = 64 << 20
SHARED_MEMORY = "/dev/shm"
REFILL_PASSES = 2  # skip mode: extra reads (of the next ranks' stretches) to make up for skipped samples


def _reason(exn: BaseException) -> str:
    return str(exn.args[0]) if exn.args else type(exn).__name__


@dataclass
class Skipped:
    """Samples of one shard left out by ``data.skip_bad_samples``: how many, and why (shard and first bad key)."""

    count: int
    reason: str


def read_shard(
    url: str, expected: int, image_shape: tuple[int, ...], skipped: list[Skipped] | None = None, *,
    start: int = 0, stop: int | None = None, exclude: np.ndarray | None = None, group_size: int = 1,
) -> Iterator[Group]:
    """Groups ``(images (n, H, W, C), labels (n,), indices (n,))`` of samples ``[start, stop)`` of one shard,
    counting only samples whose class is not in ``exclude`` (``expected`` of them in the whole shard); for photo
    shards (``image_shape == (3,)``) ``images`` is ``(1,)`` object, the file's bytes. Samples before ``start``
    are passed over without decoding their images; reading stops at ``stop``, or at the shard's end, whose sample
    count is then checked. A sample whose labels cannot be read counts as ``group_size`` samples (the
    manifest's images per member), so the pieces after it stay where the plan put them.

    A shard that cannot be read, a sample that cannot be decoded (bad image bytes, a missing label) or a count
    other than the manifest's raises :class:`ShardError` naming the shard and the sample key. With a ``skipped``
    list, bad samples (and the rest of a shard that breaks off) are left out instead and one :class:`Skipped`
    per damaged piece is appended, counting every sample of the piece that the shard did not deliver.
    """
    stop = expected if stop is None else stop
    exclude = np.zeros(0, dtype=np.int64) if exclude is None else exclude
    position, delivered, key, problems = 0, 0, None, []
    try:
        for sample in tarfile_samples([{"url": url}]):
            if position >= stop and stop < expected:
                break
            key = sample.get("__key__", "?")
            count = min(group_size, expected - position)
            try:
                kept = ~np.isin(group_labels(sample), exclude)
                count = int(kept.sum())
                if position + count <= start or position >= stop:
                    position += count
                    continue
                group = photo_group(sample) if len(image_shape) == 1 else decode_group(sample, image_shape)
            except Exception as exn:  # noqa: BLE001 - PIL, numpy and int() raise many types; all mean a bad sample
                if skipped is None:
                    raise ShardError(
                        f"{url}: sample {key!r} cannot be decoded ({_reason(exn)}); re-create the shard with "
                        "`sslpipe shard`, or set data.skip_bad_samples=true to skip and count bad samples"
                    ) from None
                problems.append(f"sample {key!r}: {_reason(exn)}")
                position += count
                continue
            lo, hi = max(0, start - position), min(count, stop - position)
            position += count
            if not kept.all():  # (a mask copies the images: only when a class is left out)
                group = tuple(a[kept] for a in group)
            group = tuple(a[lo:hi] for a in group)
            delivered += len(group[0])
            yield group
    except SslpipeError:
        raise
    except Exception as exn:  # noqa: BLE001 - tarfile, gopen and decoders raise many types; all mean a bad shard
        where = f" after sample {key!r}" if key else ""
        if skipped is None:
            raise ShardError(
                f"{url}: cannot read shard{where} ({_reason(exn)}); it is corrupt or truncated, re-create it with "
                "`sslpipe shard`"
            ) from None
        problems.append(f"unreadable{where} ({_reason(exn)})")
    whole = stop >= expected  # read to the end: the count can be checked
    if (whole and position > expected) or (position < min(stop, expected) and skipped is None):
        raise ShardError(
            f"{url}: holds {position} samples but the manifest says {expected}; the shard is truncated or was "
            "replaced, re-create it with `sslpipe shard`"
        )
    missing = (stop - start) - delivered
    if missing > 0 and skipped is not None:
        skipped.append(Skipped(missing, f"{url}: {'; '.join(problems) or 'ends early'}"))


def shuffled_batches(
    groups: Iterator[tuple[np.ndarray, ...]], batch_size: int, buffer_size: int, rng: np.random.Generator | None
) -> Iterator[tuple[np.ndarray, ...]]:
    """Re-cut groups of samples into batches of ``batch_size`` (the last one partial).

    With ``rng``, samples pass through a shuffle buffer: once ``2 * buffer_size`` samples are pending they are
    permuted together and all but ``buffer_size`` leave as batches, so a sample is mixed with at least
    ``buffer_size`` others. Vectorised: no per-sample Python work.
    """
    pending: list[tuple[np.ndarray, ...]] = []
    count = 0
    threshold = max(2 * buffer_size, batch_size) if rng is not None else batch_size
    keep = buffer_size if rng is not None else 0

    def flush(final: bool) -> Iterator[tuple[np.ndarray, ...]]:
        nonlocal pending, count
        arrays = [np.concatenate(column) for column in zip(*pending)]
        if rng is not None:
            order = rng.permutation(count)
            arrays = [a[order] for a in arrays]
        ready = count if final else (count - keep) // batch_size * batch_size
        for start in range(0, ready, batch_size):
            yield tuple(a[start : start + batch_size] for a in arrays)
        pending = [tuple(a[ready:] for a in arrays)] if ready < count else []
        count -= ready

    for group in groups:
        pending.append(group)
        count += len(group[0])
        if count >= threshold:
            yield from flush(final=False)
    if count:
        yield from flush(final=True)


@dataclass
class _WorkerFailure:
    """Sent by a DataLoader worker instead of raising, so the user sees one line, not a worker traceback."""

    message: str


def _drain(skipped: list[Skipped] | None) -> Iterator[Skipped]:
    while skipped:
        yield skipped.pop(0)


def _rows(images: Images) -> int:
    return len(images.lengths) if isinstance(images, EncodedImages) else len(images)


def _concat(batches: Sequence[Batch]) -> Batch:
    """One batch of ``batches`` (undecoded photos are re-padded to the longest file)."""
    first, columns = batches[0][0], list(zip(*batches))
    if isinstance(first, EncodedImages):
        width = max(e.data.shape[1] for e in columns[0])
        data = torch.cat([torch.nn.functional.pad(e.data, (0, width - e.data.shape[1])) for e in columns[0]])
        images: Images = EncodedImages(data, torch.cat([e.lengths for e in columns[0]]))
    else:
        images = torch.cat(columns[0])
    return images, *(torch.cat(column) for column in columns[1:])


def _take(batch: Batch, rows: slice) -> Batch:
    images = batch[0]
    if isinstance(images, EncodedImages):
        return EncodedImages(images.data[rows], images.lengths[rows]), *(t[rows] for t in batch[1:])
    return tuple(t[rows] for t in batch)


class ShardStream(IterableDataset):
    """Batches ``(images, labels int64 (b,), indices int64 (b,))`` of one rank for one epoch; ``b == batch_size``
    except for the last batch of each DataLoader worker. Images are uint8 ``(b, C, H, W)`` (channels-last
    strides) for arrays; for photos ``(b, count, 3, size, size)`` random views, ``(b, 3, size, size)`` center
    crops, or :class:`EncodedImages` when ``views`` is ``None``.
    ``transform`` (optional) makes the views of photo crops in the worker: float ``(b, count, 3, size, size)``."""

    def __init__(
        self, urls: Sequence[str], counts: Sequence[int], image_shape: tuple[int, ...], *, batch_size: int,
        rank: int, world_size: int, mode: str, epoch: int, seed: int, shuffle: bool, shuffle_buffer: int,
        kept_counts: Sequence[int], exclude_classes: Sequence[int], skip_bad_samples: bool = False, refill: int = 0,
        views: PhotoViews | None = None, transform: Transform | None = None, drop_last: bool = True,
        group_size: int = 1,
    ) -> None:
        super().__init__()
        self.skip_bad_samples, self.refill, self.views, self.transform = skip_bad_samples, refill, views, transform
        self.drop_last, self.group_size = drop_last, group_size
        self.urls, self.counts, self.image_shape = list(urls), list(counts), image_shape
        self.kept_counts, self.exclude_classes = list(kept_counts), np.asarray(exclude_classes, dtype=np.int64)
        self.batch_size, self.rank, self.world_size, self.mode = batch_size, rank, world_size, mode
        self.epoch, self.seed, self.shuffle, self.shuffle_buffer = epoch, seed, shuffle, shuffle_buffer

    def _pieces(self, worker: int, num_workers: int) -> Iterator[Piece]:
        if self.mode == "resampled":
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
            while True:
                shard = int(rng.integers(len(self.urls)))
                yield Piece(shard, 0, self.kept_counts[shard])
        rank = (self.rank + self.refill) % self.world_size  # a refill pass reads a neighbour's stretch
        pieces = rank_pieces(self.kept_counts, self.world_size, rank, self.batch_size, self.epoch, self.seed,
                             self.shuffle, self.drop_last)
        yield from worker_pieces(pieces, self.batch_size, num_workers, worker)

    def __iter__(self) -> Iterator[Batch | Skipped | _WorkerFailure]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        refill = [self.refill] if self.refill else []  # a refill pass reads the shards in another sample order
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, *refill]) if self.shuffle else None
        skipped: list[Skipped] | None = [] if self.skip_bad_samples else None
        groups = (
            group for shard, start, stop in self._pieces(worker, num_workers)
            for group in read_shard(self.urls[shard], self.kept_counts[shard], self.image_shape, skipped,
                                    start=start, stop=stop, exclude=self.exclude_classes, group_size=self.group_size)
        )
        crops = np.random.default_rng([self.seed, self.epoch, self.rank, worker, *refill, 2])
        try:
            for images, labels, indices in shuffled_batches(groups, self.batch_size, self.shuffle_buffer, rng):
                yield from _drain(skipped)
                if len(self.image_shape) == 1:
                    yield from self._photos(images, labels, indices, crops)
                else:
                    images = torch.from_numpy(images).permute(0, 3, 1, 2)
                    yield images, torch.from_numpy(labels), torch.from_numpy(indices)
            yield from _drain(skipped)
        except SslpipeError as exn:
            yield _WorkerFailure(str(exn))

    def _photos(
        self, blobs: np.ndarray, labels: np.ndarray, indices: np.ndarray, rng: np.random.Generator
    ) -> Iterator[Batch | Skipped]:
        """A batch of photos as crops (dropping, in skip mode, photos that cannot be decoded) or as bytes."""
        labels, indices = torch.from_numpy(labels), torch.from_numpy(indices)
        if self.views is None:
            yield EncodedImages.pack(blobs), labels, indices
            return
        tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
        keep = list(range(len(tensors)))
        while True:
            try:
                crops = photo_views([tensors[i] for i in keep], self.views, rng, torch.device("cpu"))
                break
            except UndecodablePhoto as exn:
                bad = keep[exn.position]
                reason = f"photo {int(indices[bad])} cannot be decoded ({exn.reason})"
                if not self.skip_bad_samples:
                    raise ShardError(f"{reason}; re-create the shards with `sslpipe shard`, or set "
                                     "data.skip_bad_samples=true to skip and count bad samples") from None
                keep.remove(bad)
                yield Skipped(1, reason)
        if self.transform is not None:
            crops = self.transform(crops)
        crops = crops if self.views.random else crops[:, 0]
        yield crops, labels[keep], indices[keep]


class ShardLoader:
    """One rank's epoch of batches ``(images, labels (B,), indices (B,))`` from a shard folder: images uint8
    ``(B, C, H, W)``; for photo shards crops of ``views`` (see :class:`ShardStream`; labels ``-1`` when unlabeled),
    or undecoded :class:`EncodedImages` with ``decode_on_device`` (the training process decodes them on its GPU).
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
        decode_on_device: bool = False,
        transform: Transform | None = None,
    ) -> None:
        self.manifest = manifest or read_manifest(location)
        if self.manifest.photos and views is None:
            raise ConfigError(f"{location} holds photos: give the size to crop them to (data.image_size)")
        self.views = views if self.manifest.photos else None
        info = self.manifest.split(split)
        classes = self.manifest.class_names
        for label in exclude_classes:
            if not 0 <= label < len(classes):
                raise ConfigError(
                    f"class {label} to leave out is not a class of {location}: 0..{len(classes) - 1} are "
                    + ", ".join(classes)
                )
        if url_template is None:
            check_local_shards(location, self.manifest, split)
        self.urls = [url_template.format(name=s.name) if url_template else storage.join(location, s.name) for s in info.shards]
        self.counts, self.exclude_classes = info.counts, tuple(exclude_classes)
        self.kept_counts = info.counts_without(self.exclude_classes, storage.join(location, MANIFEST))
        detected = position()
        self.rank = detected[0] if rank is None else rank
        self.world_size = detected[1] if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.manifest.photos:
            self.image_shape: tuple[int, ...] = (3,)
            image_bytes = self.manifest.image_sizes["mean_bytes"]
        else:
            channels, height, width = self.manifest.image_shape
            self.image_shape, image_bytes = (height, width, channels), channels * height * width
        self.batch_size, self.mode, self.shuffle, self.seed, self.drop_last = batch_size, mode, shuffle, seed, drop_last
        self.shuffle_buffer = shuffle_buffer or max(batch_size, min(8192, SHUFFLE_BUFFER_BYTES // image_bytes))
        self.decode_on_device = decode_on_device and self.manifest.photos
        self.transform = transform if self.manifest.photos and not self.decode_on_device else None
        self.shared_memory_checked = False
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.location, self.split, self.epoch = str(location), split, 0
        self.skip_bad_samples, self.skipped = skip_bad_samples, 0  # skipped: bad samples of the last epoch read
        if len(self) == 0 and (drop_last or not sum(self.kept_counts)):  # (an evaluation rank's share may be empty)
            raise ConfigError(
                f"split {split!r} of {location} has {sum(self.kept_counts)} samples: too few for {self.world_size} rank(s)"
                f" x batch_size {batch_size}; lower batch_size or use more data"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batches_per_rank(self.kept_counts, self.world_size, self.batch_size, self.mode, self.drop_last,
                                self.rank)

    def batch_bytes(self) -> int:
        """About how many bytes one batch takes as the loader processes hand it over."""
        if not self.manifest.photos:
            return self.batch_size * int(np.prod(self.image_shape))
        if self.decode_on_device:
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
                f"{shm} has {free >> 20} MiB free, but {self.num_workers} loader processes x {self.prefetch_factor + 1} "
                f"batches of {self.batch_bytes() >> 20} MiB need {needed >> 20} MiB: give the container more shared "
                "memory (docker run --shm-size=8g, or a memory-backed /dev/shm volume in Kubernetes) or lower "
                "data.num_workers or data.batch_size"
            )

    def _items(self, refill: int) -> Iterator[Batch | Skipped | _WorkerFailure]:
        """The DataLoader's items; closing this generator stops its workers at once (left to the garbage
        collector, their shutdown can wait out a 5 s timeout per worker)."""
        if not self.shared_memory_checked:
            self.check_shared_memory()
            self.shared_memory_checked = True
        stream = ShardStream(
            self.urls, self.counts, self.image_shape, batch_size=self.batch_size, rank=self.rank,
            world_size=self.world_size, mode=self.mode, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle,
            shuffle_buffer=self.shuffle_buffer, kept_counts=self.kept_counts, exclude_classes=self.exclude_classes,
            skip_bad_samples=self.skip_bad_samples, refill=refill,
            views=None if self.decode_on_device else self.views, transform=self.transform, drop_last=self.drop_last,
            group_size=self.manifest.images_per_member,
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

    def _note(self, skipped: Skipped) -> None:
        self.skipped += skipped.count
        log.warning("skipped %d bad samples of %s", skipped.count, skipped.reason)

    def _equal_batches(
        self, items: Iterator[Batch | Skipped | _WorkerFailure], limit: int, first_pass: bool
    ) -> Iterator[Batch]:
        """Pass full batches through, merge the workers' partial ones, stop after ``limit`` batches; the rest of
        the first pass of an exact epoch in skip mode is still read for its notes of skipped samples."""
        carry: list[Batch] = []
        emitted = 0
        drain = first_pass and self.skip_bad_samples and self.mode == "exact"
        for item in items:
            if isinstance(item, _WorkerFailure):
                raise ShardError(item.message)
            if isinstance(item, Skipped):
                if first_pass:
                    self._note(item)
                continue
            if emitted == limit:
                continue
            if _rows(item[0]) < self.batch_size:
                carry.append(item)
                if sum(_rows(c[0]) for c in carry) < self.batch_size:
                    continue
                merged = _concat(carry)
                item = _take(merged, slice(None, self.batch_size))
                carry = [_take(merged, slice(self.batch_size, None))] if _rows(merged[0]) > self.batch_size else []
            emitted += 1
            yield item
            if emitted == limit and not drain:
                return
        if carry and not self.drop_last and emitted < limit:
            yield _concat(carry)


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
