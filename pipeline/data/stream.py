"""The DataLoader worker's part of the streaming loader: one rank's batches for one epoch, read from the pieces of
shards the epoch plan gives this worker (:mod:`pipeline.data.plan`), shuffled in a vectorised buffer and sent
whole; photos decoded and cropped here, or sent as undecoded bytes for the GPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.data.decode import EncodedImages, PhotoViews, decodable_views
from pipeline.data.plan import Piece, SplitPlan, rank_pieces, worker_pieces
from pipeline.data.reading import Skipped, read_shard, shuffled_batches
from pipeline.errors import ShardError, SslpipeError

Images = torch.Tensor | EncodedImages
Batch = tuple[Images, torch.Tensor, torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]  # uint8 (b, count, 3, S, S) crops -> float views, same shape


@dataclass
class WorkerFailure:
    """Sent by a DataLoader worker instead of raising, so the user sees one line, not a worker traceback."""

    message: str


def drain(skipped: list[Skipped] | None) -> Iterator[Skipped]:
    while skipped:
        yield skipped.pop(0)


def rows(images: Images) -> int:
    """Images in a batch."""
    return len(images.lengths) if isinstance(images, EncodedImages) else len(images)


def concat(batches: Sequence[Batch]) -> Batch:
    """One batch of ``batches`` (undecoded photos are re-padded to the longest file)."""
    first, columns = batches[0][0], list(zip(*batches))
    images = EncodedImages.concat(columns[0]) if isinstance(first, EncodedImages) else torch.cat(columns[0])
    return images, *(torch.cat(column) for column in columns[1:])


def take(batch: Batch, part: slice) -> Batch:
    """Rows ``part`` of ``batch``."""
    images = batch[0]
    if isinstance(images, EncodedImages):
        return images.take(torch.arange(len(images.lengths))[part]), *(t[part] for t in batch[1:])
    return tuple(t[part] for t in batch)


def undecodable(index: int, reason: str, skip: bool) -> Skipped:
    """Sample ``index``, a photo no decoder can read for ``reason``: one :class:`Skipped` in skip mode, else the run
    stops with one line saying what to do."""
    message = f"photo {index} cannot be decoded ({reason})"
    if not skip:
        raise ShardError(
            f"{message}; re-create the shards with `sslpipe shard`, or set data.skip_bad_samples=true to skip and "
            "count bad samples"
        )
    return Skipped(1, message)


@dataclass
class ShardStream(IterableDataset):
    """Batches ``(images, labels int64 (b,), indices int64 (b,))`` of one rank for one epoch of ``plan``'s split;
    ``b == batch_size`` except for the last batch of each DataLoader worker. Images are uint8 ``(b, C, H, W)``
    (channels-last strides) for arrays; for photos ``(b, count, 3, size, size)`` random views, ``(b, 3, size,
    size)`` center crops, or :class:`EncodedImages` of the photos ``encoded(bytes)`` picks (all of them, or those
    the GPU's decoder reads best), beside the others' crops. ``transform`` (optional) makes the views of photo crops
    in the worker: float ``(b, count, 3, size, size)``. A ``refill`` pass reads the next ranks' stretch in another
    order (see :class:`~pipeline.data.loader.ShardLoader`)."""

    plan: SplitPlan
    batch_size: int
    rank: int
    world_size: int
    mode: str
    epoch: int
    seed: int
    shuffle: bool
    shuffle_buffer: int
    skip_bad_samples: bool = False
    refill: int = 0
    views: PhotoViews | None = None
    transform: Transform | None = None
    drop_last: bool = True
    encoded: Callable[[bytes], bool] | None = None

    def _pieces(self, worker: int, num_workers: int) -> Iterator[Piece]:
        if self.mode == "resampled":
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
            while True:
                shard = int(rng.integers(len(self.plan.urls)))
                yield Piece(shard, 0, self.plan.kept_counts[shard])
        rank = (self.rank + self.refill) % self.world_size  # a refill pass reads a neighbour's stretch
        pieces = rank_pieces(self.plan.kept_counts, self.world_size, rank, self.batch_size, self.epoch, self.seed,
                             self.shuffle, self.drop_last)
        yield from worker_pieces(pieces, self.batch_size, num_workers, worker)

    def __iter__(self) -> Iterator[Batch | Skipped | WorkerFailure]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        refill = [self.refill] if self.refill else []  # a refill pass reads the shards in another sample order
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, *refill]) if self.shuffle else None
        skipped: list[Skipped] | None = [] if self.skip_bad_samples else None
        groups = (
            group for shard, start, stop in self._pieces(worker, num_workers)
            for group in read_shard(self.plan.urls[shard], self.plan.kept_counts[shard], self.plan.image_shape,
                                    skipped, start=start, stop=stop, exclude=np.asarray(self.plan.exclude_classes,
                                                                                         dtype=np.int64),
                                    group_size=self.plan.group_size)
        )
        crops = np.random.default_rng([self.seed, self.epoch, self.rank, worker, *refill, 2])
        try:
            for images, labels, indices in shuffled_batches(groups, self.batch_size, self.shuffle_buffer, rng):
                yield from drain(skipped)
                if len(self.plan.image_shape) == 1:
                    yield from self._photos(images, labels, indices, crops)
                else:
                    images = torch.from_numpy(images).permute(0, 3, 1, 2)
                    yield images, torch.from_numpy(labels), torch.from_numpy(indices)
            yield from drain(skipped)
        except SslpipeError as exn:
            yield WorkerFailure(str(exn))

    def _photos(
        self, blobs: np.ndarray, labels: np.ndarray, indices: np.ndarray, rng: np.random.Generator
    ) -> Iterator[Batch | Skipped]:
        """A batch of photos as crops (dropping, in skip mode, photos that cannot be decoded), or those ``encoded``
        picks as bytes beside the others' crops."""
        labels, indices = torch.from_numpy(labels), torch.from_numpy(indices)
        travel = [self.encoded is not None and self.encoded(blob) for blob in blobs]
        if all(travel):
            yield EncodedImages.pack(blobs), labels, indices
            return
        here = [i for i, undecoded in enumerate(travel) if not undecoded]
        skipped = []

        def bad(position: int, reason: str) -> None:
            skipped.append(undecodable(int(indices[here[position]]), reason, self.skip_bad_samples))

        tensors = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in here]
        crops, keep = decodable_views(tensors, self.views, rng, torch.device("cpu"), bad)
        yield from skipped
        if self.encoded is not None:  # bytes for the device's decoder, crops of the rest
            rows = sorted({i for i, undecoded in enumerate(travel) if undecoded} | {here[k] for k in keep})
            packed = EncodedImages.pack([blobs[i] if travel[i] else b"" for i in rows], crops)
            yield packed, labels[rows], indices[rows]
            return
        if self.transform is not None:
            crops = self.transform(crops)
        crops = crops if self.views.random else crops[:, 0]
        yield crops, labels[keep], indices[keep]
