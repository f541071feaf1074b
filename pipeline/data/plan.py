"""Epoch semantics of the shard stream: which samples each rank and DataLoader worker reads, and how many
batches every rank yields. Pure functions of the manifest's shard counts, so all ranks agree without talking.

Modes, with ``N`` samples in ``S`` shards, ``W`` ranks, batch size ``B``:

* ``exact`` (default): each epoch the shards are put in an order drawn from ``(seed, epoch)`` and read as one
  sequence of ``N`` samples. Rank ``r`` takes the contiguous stretch ``[r L, (r + 1) L)`` of it, with
  ``L = floor(N / (W B)) B``, so every rank yields ``L / B`` batches of exactly ``B`` (DDP never waits on a rank
  that ran dry) and an epoch reads ``W L`` samples, each at most once: all but fewer than ``W B`` (e.g. 98.3% of
  CIFAR-10's 50,000 at 8 ranks x 256, whatever the number of shards). The samples left out change from epoch to
  epoch. A rank's stretch is split between its DataLoader workers at batch boundaries, so each worker reads one
  contiguous part of a few shards (the first and last of them only in part).
* evaluation (``drop_last=False``, no shuffle): every sample exactly once. The split's ``ceil(N / B)`` batches
  are dealt to the ranks as contiguous runs (rank ``r`` takes batches ``[r n / W, (r + 1) n / W)``), so the ranks
  read disjoint stretches that together are the split in shard order, only the last batch partial.
* ``resampled``: every DataLoader worker draws shards with replacement, seeded by ``(seed, epoch, rank,
  worker)``; every rank yields ``floor(N / (W B))`` batches. No coverage guarantee within an epoch; each
  yielded sample is a valid sample, and in expectation every sample is seen once per epoch.

A :class:`Piece` is a stretch of one shard: ``[start, stop)`` counts the shard's samples in order (those a run
leaves out by class not counted). A :class:`SplitPlan` is what a split's shards hold for a run, from the manifest.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from pipeline import storage
from pipeline.data.manifest import MANIFEST, Manifest, check_local_shards
from pipeline.errors import ConfigError

Mode = Literal["exact", "resampled"]
MODES = typing.get_args(Mode)


class Piece(NamedTuple):
    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class SplitPlan:
    """What a split's shards hold for a run: each shard's URL, its samples and how many of them the run reads
    (``exclude_classes`` left out), and the samples' layout."""

    location: str
    split: str
    urls: tuple[str, ...]
    counts: tuple[int, ...]
    kept_counts: tuple[int, ...]
    exclude_classes: tuple[int, ...]
    image_shape: tuple[int, ...]  # (H, W, C) arrays; (3,) photos, read as their files' bytes
    image_bytes: int  # what one image takes (photos: the mean file)
    group_size: int  # images per tar member


def split_plan(location: str, manifest: Manifest, split: str, url_template: str | None = None,
               exclude_classes: Sequence[int] = ()) -> SplitPlan:
    """The plan of ``split`` at ``location`` (a folder or URL prefix; ``url_template``, e.g. ``"pipe:aws s3 cp
    s3://bucket/shards/{name} -"``, overrides how shard names become URLs); raises naming a class to leave out that
    the shards lack, or a local shard that is missing."""
    info, classes = manifest.split(split), manifest.class_names
    for label in exclude_classes:
        if not 0 <= label < len(classes):
            raise ConfigError(f"class {label} to leave out is not a class of {location}: 0..{len(classes) - 1} are "
                              + ", ".join(classes))
    if url_template is None:
        check_local_shards(location, manifest, split)
    urls = [url_template.format(name=s.name) if url_template else storage.join(location, s.name) for s in info.shards]
    kept = info.counts_without(tuple(exclude_classes), storage.join(location, MANIFEST))
    if manifest.photos:
        shape, image_bytes = (3,), manifest.image_sizes["mean_bytes"]
    else:
        channels, height, width = manifest.image_shape
        shape, image_bytes = (height, width, channels), channels * height * width
    return SplitPlan(str(location), split, tuple(urls), tuple(info.counts), tuple(kept), tuple(exclude_classes), shape,
                     image_bytes, manifest.images_per_member)


def _check(mode: str, batch_size: int) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown loader mode {mode!r}: choose one of {', '.join(MODES)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def shard_order(count: int, epoch: int, seed: int, shuffle: bool = True) -> list[int]:
    """The order the epoch reads the shards in."""
    return (np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)).tolist()


def samples_per_rank(counts: Sequence[int], world_size: int, batch_size: int, drop_last: bool = True) -> int:
    """``L``: the samples each rank reads in a training epoch (whole batches); with ``drop_last=False``
    (evaluation) the most any rank reads, see :func:`evaluation_share`."""
    if drop_last:
        return sum(counts) // (world_size * batch_size) * batch_size
    start, stop = evaluation_share(sum(counts), world_size, 0, batch_size)
    return stop - start


def evaluation_share(total: int, world_size: int, rank: int, batch_size: int) -> tuple[int, int]:
    """``[start, stop)``: the samples of a split of ``total`` that ``rank`` reads for evaluation, a contiguous run
    of whole batches (the split's last batch partial); the ranks' runs tile ``[0, total)`` in rank order."""
    batches = -(-total // batch_size)
    return (min(total, rank * batches // world_size * batch_size),
            min(total, (rank + 1) * batches // world_size * batch_size))


def stretch(counts: Sequence[int], order: Sequence[int], start: int, stop: int) -> list[Piece]:
    """Samples ``[start, stop)`` of the sequence that reads the shards in ``order``, as pieces of shards."""
    pieces, offset = [], 0
    for shard in order:
        lo, hi = max(start, offset), min(stop, offset + counts[shard])
        if lo < hi:
            pieces.append(Piece(shard, lo - offset, hi - offset))
        offset += counts[shard]
        if offset >= stop:
            break
    return pieces


def rank_pieces(
    counts: Sequence[int], world_size: int, rank: int, batch_size: int, epoch: int, seed: int,
    shuffle: bool = True, drop_last: bool = True,
) -> list[Piece]:
    """What ``rank`` reads this epoch, in order."""
    order = shard_order(len(counts), epoch, seed, shuffle)
    if not drop_last:
        return stretch(counts, order, *evaluation_share(sum(counts), world_size, rank, batch_size))
    length = samples_per_rank(counts, world_size, batch_size)
    return stretch(counts, order, rank * length, (rank + 1) * length)


def worker_pieces(pieces: Sequence[Piece], batch_size: int, num_workers: int, worker: int) -> list[Piece]:
    """The part of a rank's ``pieces`` that DataLoader worker ``worker`` of ``num_workers`` reads: a contiguous
    run of whole batches (the last one partial when the rank's samples are not whole batches)."""
    length = sum(stop - start for _, start, stop in pieces)
    batches = -(-length // batch_size)
    lo = worker * batches // num_workers * batch_size
    hi = min((worker + 1) * batches // num_workers * batch_size, length)
    out, offset = [], 0
    for shard, start, stop in pieces:
        a, b = max(lo, offset), min(hi, offset + stop - start)
        if a < b:
            out.append(Piece(shard, start + a - offset, start + b - offset))
        offset += stop - start
    return out


def batches_per_rank(
    counts: Sequence[int], world_size: int, batch_size: int, mode: str, drop_last: bool = True, rank: int = 0,
) -> int:
    """Batches every rank yields this epoch; with ``drop_last=False`` (evaluation), the batches of ``rank``'s
    share, the split's last partial batch counted."""
    _check(mode, batch_size)
    if mode == "resampled":
        return sum(counts) // (world_size * batch_size)
    if not drop_last:
        start, stop = evaluation_share(sum(counts), world_size, rank, batch_size)
        return -(-(stop - start) // batch_size)
    return samples_per_rank(counts, world_size, batch_size) // batch_size
