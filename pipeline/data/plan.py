"""Epoch semantics of the shard stream: which shards each rank and DataLoader worker reads, and how many
batches every rank yields. Pure functions of the manifest's shard counts, so all ranks agree without talking.

Modes, with ``N`` samples in ``S`` shards, ``W`` ranks, batch size ``B``:

* ``exact`` (default): each epoch the shards are permuted with ``(seed, epoch)`` and dealt greedily to the
  least-loaded rank, so every sample belongs to exactly one rank. A rank with ``n_r`` samples can fill
  ``floor(n_r / B)`` batches; every rank yields ``min_r floor(n_r / B)`` batches so DDP never waits on a rank
  that ran dry. Each sample is seen at most once per epoch and exactly ``W * batches * B`` are seen; the rest
  (under ``B`` per rank plus the imbalance between ranks, which greedy dealing keeps under one shard) change
  from epoch to epoch. Needs ``S >= W``.
* ``resampled``: every DataLoader worker draws shards with replacement, seeded by ``(seed, epoch, rank,
  worker)``; every rank yields ``floor(N / (W * B))`` batches. No coverage guarantee within an epoch; each
  yielded sample is a valid sample, and in expectation every sample is seen once per epoch. Works with ``S < W``.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Literal

import numpy as np

from pipeline.errors import ConfigError, ShardError

Mode = Literal["exact", "resampled"]
MODES = typing.get_args(Mode)


def assign_shards(counts: Sequence[int], world_size: int, epoch: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Shard indices for each rank: ``result[rank]`` in reading order."""
    if len(counts) < world_size:
        raise ShardError(
            f"{len(counts)} shards cannot feed {world_size} ranks in exact mode; re-shard with a smaller "
            "--samples-per-shard or use mode 'resampled'"
        )
    order = np.random.default_rng([seed, epoch]).permutation(len(counts)) if shuffle else np.arange(len(counts))
    loads = np.zeros(world_size, dtype=np.int64)
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    for shard in order.tolist():
        rank = int(np.argmin(loads))
        ranks[rank].append(shard)
        loads[rank] += counts[shard]
    return ranks


def worker_shards(rank_shards: Sequence[int], num_workers: int, worker_id: int) -> list[int]:
    """The part of a rank's shards that DataLoader worker ``worker_id`` of ``num_workers`` reads."""
    return list(rank_shards[worker_id::num_workers])


def batches_per_rank(
    counts: Sequence[int], world_size: int, batch_size: int, mode: str, epoch: int, seed: int,
    shuffle: bool = True, drop_last: bool = True, rank: int = 0,
) -> int:
    """Batches every rank yields this epoch. With ``drop_last=False`` (single-process evaluation) the last
    partial batch counts and the number is that of ``rank`` alone."""
    if mode not in MODES:
        raise ConfigError(f"unknown loader mode {mode!r}: choose one of {', '.join(MODES)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if mode == "resampled":
        return sum(counts) // (world_size * batch_size)
    loads = [sum(counts[s] for s in shards) for shards in assign_shards(counts, world_size, epoch, seed, shuffle)]
    if not drop_last:
        return -(-loads[rank] // batch_size)
    return min(loads) // batch_size
