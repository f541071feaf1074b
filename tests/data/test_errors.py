"""Bad input gets one line naming the file or value, never a webdataset traceback or a silent empty epoch."""

import io
import json
import re
import shutil
import tarfile

import numpy as np
import psutil
import pytest

from pipeline.data import ShardLoader, read_manifest
from pipeline.data.plan import rank_pieces
from pipeline.data.manifest import verify_shards
from pipeline.errors import ConfigError, ShardError
from tests.helpers import rewrite_shard


@pytest.fixture
def shards(synthetic_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(synthetic_shards, copy)
    return copy


def _read_all(location, **kwargs):
    options = dict(rank=0, world_size=1, num_workers=2) | kwargs
    try:
        return list(ShardLoader(location, "train", 64, **options))
    finally:  # a failed epoch stops its DataLoader workers at once, not when the garbage collector runs
        assert not [p for p in psutil.Process().children() if p.name() == "pt_data_worker"]


def _one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_directory(tmp_path):
    with pytest.raises(ShardError) as exc_info:
        ShardLoader(tmp_path / "nope")
    assert _one_line(exc_info) == (
        f"shard directory {tmp_path / 'nope'} does not exist; create it with `sslpipe shard SOURCE --out {tmp_path / 'nope'}`"
    )


def test_directory_without_manifest(tmp_path):
    with pytest.raises(ShardError, match="manifest.json not found: .* is not a finished shard directory"):
        ShardLoader(tmp_path)


def test_missing_shard(shards):
    (shards / "train-000002.tar").unlink()
    with pytest.raises(ShardError, match="train-000002.tar: shard listed in manifest.json is missing"):
        ShardLoader(shards)


def test_truncated_shard_caught_before_reading(shards):
    path = shards / "train-000001.tar"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ShardError, match=r"train-000001.tar: 5000 bytes but manifest.json records \d+; the shard is truncated"):
        ShardLoader(shards)


def test_truncated_shard_caught_while_streaming(shards):
    path = shards / "train-000001.tar"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ShardError) as exc_info:
        _read_all(shards, url_template=f"file://{shards}/{{name}}")  # a URL source: no local size check
    assert "train-000001.tar: cannot read shard" in _one_line(exc_info)


def test_empty_tar(shards):
    (shards / "train-000003.tar").write_bytes(b"")
    with pytest.raises(ShardError) as exc_info:
        _read_all(shards, url_template=f"{shards}/{{name}}")
    assert "train-000003.tar: " in _one_line(exc_info)


def test_count_mismatch_with_manifest(shards):
    raw = json.loads((shards / "manifest.json").read_text())
    raw["splits"]["train"]["shards"][0]["num_samples"] += 5
    raw["splits"]["train"]["num_samples"] += 5
    (shards / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError) as exc_info:
        _read_all(shards, shuffle=False)
    assert "train-000000.tar: holds 700 samples but the manifest says 705" in _one_line(exc_info)


def test_sha256_mismatch(shards):
    path = shards / "test-000000.tar"
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="test-000000.tar: sha256 does not match manifest.json"):
        verify_shards(shards, read_manifest(shards))


def test_corrupt_manifest(shards):
    (shards / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json: not valid JSON"):
        ShardLoader(shards)


def test_manifest_missing_field(shards):
    raw = json.loads((shards / "manifest.json").read_text())
    del raw["image_shape"]
    (shards / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="manifest.json: missing or unexpected field .*image_shape"):
        ShardLoader(shards)


def test_unknown_split(synthetic_shards):
    with pytest.raises(ShardError, match="manifest.json has no split 'val'; it has test, train"):
        ShardLoader(synthetic_shards, "val")


def test_too_few_samples_is_not_a_silent_empty_epoch(synthetic_shards):
    with pytest.raises(ConfigError, match="split 'test' .* has 500 samples: too few for 2 rank\\(s\\) x batch_size 256"):
        ShardLoader(synthetic_shards, "test", 256, rank=0, world_size=2, mode="resampled")


def test_fewer_shards_than_ranks_still_feed_every_rank(synthetic_shards):
    """The test split is one shard of 500: two ranks read disjoint stretches of it, 31 batches of 8 each."""
    seen = []
    for rank in range(2):
        loader = ShardLoader(synthetic_shards, "test", 8, rank=rank, world_size=2, num_workers=2)
        batches = list(loader)
        assert len(batches) == len(loader) == 31 and all(len(b[0]) == 8 for b in batches)
        seen.append({int(i) for b in batches for i in b[2]})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 496


def _indices(path, chunk=""):
    """Sample indices held by the chunks of shard ``path`` whose key starts with ``chunk``."""
    with tarfile.open(path) as tar:
        return {int(i) for m in tar.getmembers() if m.name.startswith(chunk) and m.name.endswith(".indices.npy")
                for i in np.load(io.BytesIO(tar.extractfile(m).read()))}


def _bad_image(member, data):
    return b"not a png" if member == "train-chunk-00000256.images.png" else data


def _no_labels(member, data):
    return None if member == "train-chunk-00000000.labels.npy" else data


@pytest.mark.parametrize("edit, reason", [
    (_bad_image, r"train-000001.tar: sample 'train-chunk-00000256' cannot be decoded \(cannot identify image"),
    (_no_labels, r"train-000003.tar: sample 'train-chunk-00000000' cannot be decoded \(members \['images.png', "
                 r"'indices.npy'\], expected an image with .cls or a chunk\)"),
])
def test_a_bad_sample_names_its_shard_and_key(shards, edit, reason):
    rewrite_shard(shards, "train-000001.tar" if edit is _bad_image else "train-000003.tar", edit)
    with pytest.raises(ShardError) as exc_info:
        _read_all(shards)
    message = _one_line(exc_info)
    assert re.search(reason, message), message
    assert "set data.skip_bad_samples=true to skip and count bad samples" in message


def _tar_order(path):
    """Sample indices of shard ``path`` in the order it stores them."""
    with tarfile.open(path) as tar:
        return [int(i) for m in tar.getmembers() if m.name.endswith(".indices.npy")
                for i in np.load(io.BytesIO(tar.extractfile(m).read()))]


def test_skip_mode_counts_bad_samples_and_keeps_ranks_equal(shards, caplog):
    """Two bad chunks (256 + 256 samples) and a shard cut short (read through a URL: no size check first) are
    skipped and counted where the epoch's plan reads them; both ranks still yield the planned number of full
    batches, none holding a bad sample."""
    lost_indices = (_indices(shards / "train-000001.tar", "train-chunk-00000256")
                    | _indices(shards / "train-000003.tar", "train-chunk-00000000") | _indices(shards / "train-000004.tar"))
    manifest = read_manifest(shards)
    order = [_tar_order(shards / shard.name) for shard in manifest.splits["train"].shards]
    planned = {order[shard][i] for rank in range(2) for shard, start, stop in
               rank_pieces(manifest.splits["train"].counts, 2, rank, 64, epoch=0, seed=0) for i in range(start, stop)}
    rewrite_shard(shards, "train-000001.tar", _bad_image)
    rewrite_shard(shards, "train-000003.tar", _no_labels)
    truncated = shards / "train-000004.tar"  # 200 samples, in one chunk: cut inside it, all 200 are lost
    truncated.write_bytes(truncated.read_bytes()[:5000])
    skipped, seen = 0, set()
    for rank in range(2):
        loader = ShardLoader(shards, "train", 64, rank=rank, world_size=2, num_workers=2, skip_bad_samples=True,
                             url_template=f"file://{shards}/{{name}}")
        batches = list(loader)
        assert len(batches) == len(loader) and all(len(b[0]) == 64 for b in batches)
        seen |= {int(i) for b in batches for i in b[2]}
        skipped += loader.skipped
    assert 500 < skipped == len(lost_indices & planned) <= 256 + 256 + 200
    assert not seen & lost_indices
    assert "skipped 256 bad samples of " in caplog.text and "sample 'train-chunk-00000256': cannot identify" in caplog.text


def test_skip_mode_evaluation_reads_every_good_sample_once(shards):
    lost_indices = _indices(shards / "train-000001.tar", "train-chunk-00000256")
    rewrite_shard(shards, "train-000001.tar", _bad_image)
    loader = ShardLoader(shards, "train", 64, rank=0, world_size=1, num_workers=1, shuffle=False, drop_last=False,
                         skip_bad_samples=True)
    indices = [int(i) for batch in loader for i in batch[2]]
    assert sorted(indices) == sorted(set(range(3000)) - lost_indices)
    assert loader.skipped == 256
