import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.data import open_source, read_manifest, write_shards
from pipeline.data.idx import read_idx
from pipeline.data.sources import Source, array_split
from pipeline.errors import ShardError, SourceError
from tests.conftest import FASHION_DIR, synthetic_labels
from tests.helpers import read_split


@pytest.mark.parametrize(("split", "stem", "count"), [("train", "train", 60000), ("test", "t10k", 10000)])
def test_fashion_mnist_round_trips_exactly(fashion_shards, split, stem, count):
    images, labels, indices = read_split(fashion_shards, split)
    expected_images = read_idx(FASHION_DIR / f"{stem}-images-idx3-ubyte.gz")
    expected_labels = read_idx(FASHION_DIR / f"{stem}-labels-idx1-ubyte.gz")
    assert len(images) == count
    np.testing.assert_array_equal(indices, np.arange(count))
    np.testing.assert_array_equal(images[:, 0], expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_fashion_manifest_describes_the_shards(fashion_shards):
    manifest = read_manifest(fashion_shards)
    assert manifest.source["name"] == "fashion-mnist"
    assert manifest.image_shape == (1, 28, 28)
    assert manifest.splits["train"].num_samples == 60000 and manifest.splits["test"].num_samples == 10000
    assert sum(manifest.splits["train"].counts) == 60000
    assert manifest.class_names[0] == "T-shirt/top"
    class_totals = np.sum([shard.class_counts for shard in manifest.splits["train"].shards], axis=0)
    assert class_totals.tolist() == [6000] * 10  # Fashion-MNIST is balanced
    pixels = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz") / 255.0
    assert manifest.channel_mean[0] == pytest.approx(pixels.mean(), abs=1e-5)
    assert manifest.channel_std[0] == pytest.approx(pixels.std(), abs=1e-5)
    for shard in manifest.splits["test"].shards:
        data = (fashion_shards / shard.name).read_bytes()
        assert shard.bytes == len(data)
        assert shard.sha256 == hashlib.sha256(data).hexdigest()
    raw = json.loads((fashion_shards / "manifest.json").read_text())
    assert {"created", "writer_version", "channel_mean", "channel_std", "image_shape"} <= raw.keys()
    assert sorted(p.name for p in fashion_shards.iterdir()) == sorted(
        ["manifest.json"] + [s.name for split in manifest.splits.values() for s in split.shards]
    )


@pytest.mark.parametrize(("encoding", "per_member"), [("png", 1), ("npy", 1), ("npy", 100), ("png", 100)])
def test_layouts_and_encodings_round_trip(tmp_path, encoding, per_member):
    source = open_source("synthetic", num_train=300, num_test=50, channels=3, image_size=16)
    write_shards(source, tmp_path, samples_per_shard=128, encoding=encoding, images_per_member=per_member, progress=False)
    expected_images, expected_labels = source.splits["train"].load(np.arange(300))
    images, labels, _ = read_split(tmp_path, "train")
    np.testing.assert_array_equal(images, expected_images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labels, expected_labels)
    assert read_manifest(tmp_path).images_per_member == per_member


def test_same_seed_gives_identical_shards(tmp_path):
    digests = []
    for name in ("a", "b"):
        manifest = write_shards(open_source("synthetic", num_train=500, num_test=10), tmp_path / name, progress=False)
        digests.append([s.sha256 for split in manifest.splits.values() for s in split.shards])
    assert digests[0] == digests[1]


def test_interrupted_write_leaves_no_half_shard_and_no_manifest(tmp_path):
    images = np.zeros((1000, 8, 8, 1), np.uint8)
    calls = 0

    def load(indices):
        nonlocal calls
        calls += 1
        if calls > 6:  # dies inside the second shard
            raise KeyboardInterrupt
        return images[indices], np.zeros(len(indices), np.int64)

    broken = array_split(images, np.zeros(1000))
    broken.load = load
    source = Source("broken", {"train": broken, "test": array_split(images[:10], np.zeros(10))}, ["a"])
    with pytest.raises(KeyboardInterrupt):
        write_shards(source, tmp_path, samples_per_shard=500, images_per_member=100, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]  # whole; no temp file, no manifest
    with pytest.raises(ShardError, match="not a finished shard directory"):
        read_manifest(tmp_path)


def test_refuses_to_overwrite_without_flag(synthetic_shards):
    with pytest.raises(ShardError, match="already holds shards.*--overwrite"):
        write_shards(open_source("synthetic", num_train=10, num_test=10), synthetic_shards, progress=False)


def test_overwrite_replaces_old_shards(tmp_path):
    write_shards(open_source("synthetic", num_train=900, num_test=10), tmp_path, samples_per_shard=100, progress=False)
    write_shards(
        open_source("synthetic", num_train=200, num_test=10), tmp_path, samples_per_shard=100, overwrite=True,
        progress=False,
    )
    assert sorted(p.name for p in tmp_path.glob("train-*.tar")) == ["train-000000.tar", "train-000001.tar"]


def test_synthetic_labels_survive(synthetic_shards):
    _, labels, _ = read_split(synthetic_shards, "test")
    np.testing.assert_array_equal(labels, synthetic_labels(3000, 500)["test"])


def _write_png(path, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_folder_source_with_splits_and_resize(tmp_path):
    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            for i in range(3):
                _write_png(tmp_path / "tree" / split / name / f"{i}.png", (40 + 10 * i, 30), 100 * label)
    source = open_source(f"folder:{tmp_path / 'tree'}", image_size=24)
    assert source.class_names == ["cat", "dog"]
    write_shards(source, tmp_path / "out", progress=False)
    images, labels, _ = read_split(tmp_path / "out", "train")
    assert images.shape == (6, 3, 24, 24)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(images.reshape(6, -1).mean(1), [0, 0, 0, 100, 100, 100])


def test_folder_source_holds_out_a_test_split(tmp_path):
    for i in range(20):
        _write_png(tmp_path / ("a" if i % 2 else "b") / f"{i}.png", (8, 8), i)
    source = open_source(f"folder:{tmp_path}", test_fraction=0.25, channels=1)
    assert (source.splits["train"].num_samples, source.splits["test"].num_samples) == (15, 5)
    assert source.splits["train"].image_shape == (8, 8, 1)


def test_folder_source_names_the_odd_sized_image(tmp_path):
    _write_png(tmp_path / "a" / "0.png", (8, 8), 0)
    _write_png(tmp_path / "a" / "1.png", (9, 8), 0)
    source = open_source(f"folder:{tmp_path}", test_fraction=0.0)
    with pytest.raises(SourceError, match=r"1\.png: 8x9 pixels but earlier images are 8x8.*--image-size"):
        source.splits["train"].load(np.arange(2))


def test_unknown_source():
    with pytest.raises(SourceError, match="unknown source 'imagenet': choose one of fashion-mnist"):
        open_source("imagenet")


def test_missing_idx_files_say_where_they_were_sought(tmp_path):
    with pytest.raises(SourceError, match=f"mnist: IDX files not found in {tmp_path}.*--root"):
        open_source("mnist", root=tmp_path, download=False)
