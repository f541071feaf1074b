"""Bad input gets one line naming the file or value, never a webdataset traceback or a silent empty epoch."""

import json
import shutil

import pytest

from pipeline.data import ShardLoader, read_manifest
from pipeline.data.manifest import verify_shards
from pipeline.errors import ConfigError, ShardError


@pytest.fixture
def shards(synthetic_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(synthetic_shards, copy)
    return copy


def _read_all(location, **kwargs):
    options = dict(rank=0, world_size=1, num_workers=2) | kwargs
    return list(ShardLoader(location, "train", 64, **options))


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


def test_too_few_shards_for_ranks(synthetic_shards):
    with pytest.raises(ShardError, match="1 shards cannot feed 2 ranks"):
        ShardLoader(synthetic_shards, "test", 8, rank=0, world_size=2)
