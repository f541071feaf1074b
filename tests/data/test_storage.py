import pytest

from pipeline.data import storage


def test_an_interrupted_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), storage.atomic_writer(tmp_path, "train-000000.tar") as handle:
        handle.write(b"half a shard")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
    with storage.atomic_writer(tmp_path, "train-000000.tar") as handle:
        handle.write(b"a whole shard")
    assert [p.name for p in tmp_path.iterdir()] == ["train-000000.tar"]
    assert (tmp_path / "train-000000.tar").read_bytes() == b"a whole shard"
