"""Ranks of a process group (what Ray Train's TorchTrainer starts on its workers) each read a disjoint, equal share
of the shards without being told their rank: the loader takes it from the group (webdataset's default node
splitter raises there). The count under real Ray Train workers: ``images`` of the shared 2-worker run
(tests/test_pretrain.py) and of the two-node job (tests/test_cluster.py)."""

import numpy as np
import pytest

from tests.processes import gloo_ranks


def _read_epoch(shards: str) -> dict:
    from pipeline.data import ShardLoader

    loader = ShardLoader(shards, "train", 64, num_workers=2)  # no rank given: it must find the group's
    indices = np.concatenate([batch[2].numpy() for batch in loader])
    return {"position": (loader.rank, loader.world_size, len(loader)), "indices": indices}


@pytest.mark.slow  # processes of their own
def test_ranks_of_a_process_group_read_disjoint_equal_shares(even_shards):
    records = gloo_ranks(_read_epoch, str(even_shards))
    assert [r["position"] for r in records] == [(0, 2, 8), (1, 2, 8)]
    everything = np.concatenate([r["indices"] for r in records])
    np.testing.assert_array_equal(np.sort(everything), np.arange(1024))
