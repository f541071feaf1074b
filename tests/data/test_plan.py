import pytest

from pipeline.data.plan import assign_shards, batches_per_rank, worker_shards
from pipeline.errors import ConfigError, ShardError

COUNTS = [700, 700, 700, 700, 200]


def test_every_shard_goes_to_exactly_one_rank():
    ranks = assign_shards(COUNTS, 2, epoch=0, seed=0)
    assert sorted(s for shards in ranks for s in shards) == list(range(len(COUNTS)))


def test_greedy_dealing_balances_samples():
    for epoch in range(10):
        loads = [sum(COUNTS[s] for s in shards) for shards in assign_shards(COUNTS, 2, epoch, seed=0)]
        assert sorted(loads) == [1400, 1600]  # best possible split of 4x700 + 200


def test_epochs_reshuffle_and_repeat_deterministically():
    counts = [100] * 8
    first = assign_shards(counts, 2, epoch=0, seed=0)
    assert first == assign_shards(counts, 2, epoch=0, seed=0)
    assert any(assign_shards(counts, 2, epoch=e, seed=0) != first for e in range(1, 5))


def test_no_shuffle_deals_in_order():
    assert assign_shards([10, 10, 10, 10], 2, epoch=3, seed=9, shuffle=False) == [[0, 2], [1, 3]]


def test_worker_split():
    assert worker_shards([4, 1, 3, 0, 2], 2, 0) == [4, 3, 2]
    assert worker_shards([4, 1, 3, 0, 2], 2, 1) == [1, 0]
    assert worker_shards([5], 3, 2) == []


def test_batches_per_rank_hand_computed():
    # ranks hold 1400 and 1600 samples: min(1400 // 64, 1600 // 64) = 21
    assert batches_per_rank(COUNTS, 2, 64, "exact", epoch=0, seed=0) == 21
    # resampled: floor(3000 / (2 * 64)) = 23
    assert batches_per_rank(COUNTS, 2, 64, "resampled", epoch=0, seed=0) == 23
    # single process evaluation keeps the partial batch: ceil(3000 / 64) = 47
    assert batches_per_rank(COUNTS, 1, 64, "exact", epoch=0, seed=0, drop_last=False) == 47


def test_too_few_shards_for_ranks():
    with pytest.raises(ShardError, match="2 shards cannot feed 3 ranks.*--samples-per-shard"):
        assign_shards([10, 10], 3, epoch=0, seed=0)


def test_unknown_mode():
    with pytest.raises(ConfigError, match="unknown loader mode 'random'"):
        batches_per_rank(COUNTS, 1, 8, "random", epoch=0, seed=0)
