import pytest

from pipeline import storage


def test_an_interrupted_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), storage.atomic_writer(tmp_path, "train-000000.tar") as handle:
        handle.write(b"half a shard")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
    with storage.atomic_writer(tmp_path, "train-000000.tar") as handle:
        handle.write(b"a whole shard")
    assert [p.name for p in tmp_path.iterdir()] == ["train-000000.tar"]
    assert (tmp_path / "train-000000.tar").read_bytes() == b"a whole shard"


def test_urls_are_written_whole_listed_and_removed():
    location = "memory://sslpipe-test/shards"
    with pytest.raises(RuntimeError), storage.atomic_writer(location, "train-000000.tar") as handle:
        handle.write(b"half a shard")
        raise RuntimeError("writer died")
    assert storage.names(location, "*") == []
    for name in ("train-000000.tar", "train-000001.tar", "manifest.json"):
        with storage.atomic_writer(location, name) as handle:
            handle.write(name.encode())
    assert storage.names(location, "*-[0-9][0-9][0-9][0-9][0-9][0-9].tar") == ["train-000000.tar", "train-000001.tar"]
    assert storage.read_bytes(storage.join(location, "manifest.json")) == b"manifest.json"
    storage.remove(location, ["train-000001.tar", "manifest.json"])
    assert storage.names(location, "*") == ["train-000000.tar"]
    assert storage.absolute(location) == location and storage.absolute("rel").startswith("/")
