import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.data import ShardLoader
from pipeline.data.plan import batches_per_rank
from pipeline.data.reading import shuffled_batches
from pipeline.distributed import position, world
from pipeline.errors import ConfigError, ShardError
from tests.conftest import synthetic_labels


def _epoch(location, rank, world_size, epoch=0, **kwargs):
    loader = ShardLoader(location, "train", 64, rank=rank, world_size=world_size, num_workers=2, **kwargs)
    loader.set_epoch(epoch)
    batches = list(loader)
    return loader, batches, np.concatenate([b[2].numpy() for b in batches])


def test_two_ranks_two_workers_see_every_sample_exactly_once(even_shards):
    seen = []
    for rank in range(2):
        loader, batches, indices = _epoch(even_shards, rank, 2)
        assert len(batches) == len(loader) == 8  # 512 samples per rank / 64
        assert all(b[0].shape == (64, 1, 28, 28) and b[0].dtype == torch.uint8 for b in batches)
        seen.append(indices)
    assert not set(seen[0]) & set(seen[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(1024))


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_uneven_shards_equal_batches_and_the_stated_bound(synthetic_shards, epoch):
    counts, seen = [], []
    for rank in range(2):
        loader, batches, indices = _epoch(synthetic_shards, rank, 2, epoch=epoch)
        counts.append(len(batches))
        seen.append(indices)
        assert all(len(b[0]) == 64 for b in batches)
    assert counts[0] == counts[1] == 23  # 3000 samples in shards of 700, 700, 700, 700, 200: 3000 // 128
    everything = np.concatenate(seen)
    assert len(np.unique(everything)) == len(everything) == 2 * 23 * 64  # at most once; W * nb * B seen
    assert everything.max() < 3000


def test_labels_travel_with_their_samples(synthetic_shards):
    labels = synthetic_labels(3000, 500)["train"]
    _, batches, _ = _epoch(synthetic_shards, 0, 1)
    for _, batch_labels, indices in batches:
        np.testing.assert_array_equal(batch_labels.numpy(), labels[indices.numpy()])


def test_a_held_out_class_is_left_out_and_the_plan_counts_what_is_left(synthetic_shards):
    labels = synthetic_labels(3000, 500)["train"]
    kept = int((labels != 3).sum())
    seen = []
    for rank in range(2):
        loader, batches, indices = _epoch(synthetic_shards, rank, 2, exclude_classes=(3,))
        assert sum(loader.plan.kept_counts) == kept < 3000
        assert len(batches) == len(loader) > 0 and all(len(b[0]) == 64 for b in batches)
        assert not any((b[1] == 3).any() for b in batches)
        seen.append(indices)
    everything = np.concatenate(seen)
    assert len(np.unique(everything)) == len(everything)
    assert len(everything) == 2 * (kept // (2 * 64)) * 64


def test_a_class_outside_the_data_set_is_refused(synthetic_shards):
    with pytest.raises(ConfigError, match="class 10 to leave out is not a class of .*: 0..9 are"):
        ShardLoader(synthetic_shards, "train", 64, rank=0, world_size=1, exclude_classes=(10,))


def test_leaving_a_class_out_needs_a_manifest_with_class_counts(tmp_path, even_shards):
    shutil.copytree(even_shards, tmp_path, dirs_exist_ok=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            del shard["class_counts"]  # as an older sslpipe wrote it
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert len(ShardLoader(tmp_path, "train", 64, rank=0, world_size=1)) == 16
    with pytest.raises(ShardError, match="manifest.json: the manifest has no per-class counts"):
        ShardLoader(tmp_path, "train", 64, rank=0, world_size=1, exclude_classes=(0,))


def test_epochs_reshuffle_and_are_reproducible(synthetic_shards):
    first = _epoch(synthetic_shards, 0, 2, epoch=0)[2]
    again = _epoch(synthetic_shards, 0, 2, epoch=0)[2]
    other = _epoch(synthetic_shards, 0, 2, epoch=1)[2]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[: len(other)], other[: len(first)])


def test_shuffle_buffer_mixes_shards(even_shards):
    _, batches, _ = _epoch(even_shards, 0, 1, shuffle_buffer=256)
    shard_of = {}  # indices are in a seeded order within shards; a batch from one shard only is unmixed
    loader = ShardLoader(even_shards, "train", 256, rank=0, world_size=1, num_workers=0, shuffle=False)
    for shard, batch in enumerate(loader):
        shard_of.update({int(i): shard for i in batch[2]})
    mixed = [len({shard_of[int(i)] for i in b[2]}) for b in batches]
    assert max(mixed) >= 2


def test_resampled_mode_equal_batches_valid_samples(synthetic_shards):
    labels = synthetic_labels(3000, 500)["train"]
    counts = []
    for rank in range(2):
        _, batches, indices = _epoch(synthetic_shards, rank, 2, mode="resampled")
        counts.append(len(batches))
        assert indices.min() >= 0 and indices.max() < 3000
        np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), labels[indices])
    assert counts == [23, 23]  # floor(3000 / (2 * 64))


def test_single_process_evaluation_reads_everything(synthetic_shards):
    loader = ShardLoader(synthetic_shards, "test", 64, rank=0, world_size=1, num_workers=2, shuffle=False, drop_last=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 8  # ceil(500 / 64)
    np.testing.assert_array_equal(np.sort(np.concatenate([b[2] for b in batches])), np.arange(500))


def test_shuffled_batches_keeps_every_sample():
    groups = [(np.arange(i, i + 10), np.arange(i, i + 10)) for i in range(0, 100, 10)]
    batches = list(shuffled_batches(iter(groups), 16, 20, np.random.default_rng(0)))
    assert [len(b[0]) for b in batches] == [16] * 6 + [4]
    values = np.concatenate([b[0] for b in batches])
    assert sorted(values) == list(range(100)) and not np.array_equal(values, np.arange(100))
    ordered = list(shuffled_batches(iter(groups), 16, 20, None))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in ordered]), np.arange(100))


def test_world_position_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert position() == (3, 4)
    assert world() == (0, 1)  # no process group: collectives and losses stay local


def test_len_matches_plan(synthetic_shards):
    loader = ShardLoader(synthetic_shards, "train", 100, rank=1, world_size=2)
    for epoch in range(3):
        loader.set_epoch(epoch)
        assert len(loader) == batches_per_rank(loader.plan.counts, 2, 100, "exact") == 15  # 3000 // 200


@pytest.mark.parametrize("template", ["pipe:cat {root}/{{name}}", "file://{root}/{{name}}"])
def test_url_templates_stream_through_webdataset_openers(even_shards, template):
    loader = ShardLoader(even_shards, "train", 64, rank=0, world_size=1, num_workers=0, shuffle=False,
                         drop_last=False, url_template=template.format(root=even_shards))
    assert loader.plan.urls[0].startswith(template.split("{")[0])
    indices = np.concatenate([batch[2].numpy() for batch in loader])
    np.testing.assert_array_equal(np.sort(indices), np.arange(1024))
