import itertools

import pytest

from pipeline.data.plan import (
    Piece, batches_per_rank, evaluation_share, rank_pieces, samples_per_rank, shard_order, worker_pieces,
)
from pipeline.errors import ConfigError

COUNTS = [700, 700, 700, 700, 200]


def _samples(pieces):
    return [(shard, i) for shard, start, stop in pieces for i in range(start, stop)]


def test_ranks_read_disjoint_stretches_of_whole_batches():
    # 3000 samples, 2 ranks x 64: floor(3000 / 128) = 23 batches, 1472 samples each
    assert samples_per_rank(COUNTS, 2, 64) == 1472
    for epoch in range(5):
        ranks = [rank_pieces(COUNTS, 2, r, 64, epoch, seed=0) for r in range(2)]
        samples = [_samples(pieces) for pieces in ranks]
        assert [len(s) for s in samples] == [1472, 1472]
        assert not set(samples[0]) & set(samples[1])
        assert all(0 <= i < COUNTS[shard] for shard, i in samples[0] + samples[1])


def test_the_stretches_follow_the_epochs_shard_order():
    order = shard_order(5, epoch=3, seed=0)
    first = rank_pieces(COUNTS, 2, 0, 64, epoch=3, seed=0)
    assert first[0] == Piece(order[0], 0, COUNTS[order[0]]) and [p.shard for p in first] == order[: len(first)]
    assert rank_pieces(COUNTS, 2, 0, 64, epoch=3, seed=0) == first  # every rank computes the same plan
    assert any(rank_pieces(COUNTS, 2, 0, 64, epoch=e, seed=0) != first for e in range(4, 8))
    assert [p.shard for p in rank_pieces([10, 10, 10, 10], 1, 0, 8, epoch=3, seed=9, shuffle=False)] == [0, 1, 2, 3]


def test_cifar_sized_set_is_covered_on_8_ranks_with_4_workers_each():
    """13 shards of 4,096 (CIFAR-10's 50,000): at least 98% of the samples every epoch, each at most once, every
    loader worker with something to read."""
    counts = [4096] * 12 + [50000 - 12 * 4096]
    for epoch in range(3):
        seen = []
        for rank in range(8):
            pieces = rank_pieces(counts, 8, rank, 256, epoch, seed=0)
            per_worker = [worker_pieces(pieces, 256, 4, w) for w in range(4)]
            assert all(per_worker) and sum(len(_samples(w)) for w in per_worker) == len(_samples(pieces))
            assert sorted(s for w in per_worker for s in _samples(w)) == sorted(_samples(pieces))
            seen += _samples(pieces)
        assert len(seen) == len(set(seen)) == 8 * 24 * 256
        assert len(seen) / 50000 >= 0.98
    assert batches_per_rank(counts, 8, 256, "exact") == 24


def test_workers_split_a_rank_at_batch_boundaries():
    pieces = [Piece(4, 100, 700), Piece(1, 0, 300)]  # 900 samples: 15 batches of 60
    parts = [worker_pieces(pieces, 60, 2, w) for w in range(2)]
    assert parts == [[Piece(4, 100, 520)], [Piece(4, 520, 700), Piece(1, 0, 300)]]  # 7 and 8 batches
    assert worker_pieces([Piece(0, 0, 10)], 8, 3, 0) == [] and worker_pieces([Piece(0, 0, 10)], 8, 3, 2)


def test_batches_per_rank_hand_computed():
    assert batches_per_rank(COUNTS, 2, 64, "exact") == 23  # floor(3000 / 128)
    assert batches_per_rank(COUNTS, 2, 64, "resampled") == 23  # floor(3000 / (2 * 64))
    assert batches_per_rank(COUNTS, 1, 64, "exact", drop_last=False) == 47  # ceil(3000 / 64): evaluation
    assert batches_per_rank([10, 10], 3, 2, "exact") == 3  # fewer shards than ranks is fine


def test_evaluation_deals_every_sample_once_in_contiguous_runs_of_whole_batches():
    for world_size in (1, 2, 3, 8):
        shares = [evaluation_share(3000, world_size, rank, 64) for rank in range(world_size)]
        assert shares[0][0] == 0 and shares[-1][1] == 3000
        assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))  # they tile the split in rank order
        assert all(start % 64 == 0 for start, _ in shares)  # only the split's last batch is partial
        pieces = [rank_pieces(COUNTS, world_size, r, 64, epoch=0, seed=0, shuffle=False, drop_last=False)
                  for r in range(world_size)]
        everything = [s for p in pieces for s in _samples(p)]
        assert everything == _samples([Piece(i, 0, c) for i, c in enumerate(COUNTS)])  # shard order, each once
        batches = [batches_per_rank(COUNTS, world_size, 64, "exact", drop_last=False, rank=r)
                   for r in range(world_size)]
        assert sum(batches) == 47 and max(batches) - min(batches) <= 1
    assert evaluation_share(100, 4, 0, 64) == (0, 0) and evaluation_share(100, 4, 3, 64) == (64, 100)


def test_unknown_mode():
    with pytest.raises(ConfigError, match="unknown loader mode 'random'"):
        batches_per_rank(COUNTS, 1, 8, "random")
