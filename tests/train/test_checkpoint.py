import pytest
import torch

from pipeline.errors import SslpipeError
from pipeline.train import CHECKPOINT_FILE, load_checkpoint, save_checkpoint


def test_checkpoints_round_trip_and_a_truncated_one_is_named(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "step": 42}
    save_checkpoint(tmp_path / CHECKPOINT_FILE, state)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # written under a temporary name, renamed
    loaded = load_checkpoint(tmp_path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])

    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SslpipeError, match=f"{path}: unreadable checkpoint"):
        load_checkpoint(tmp_path)
    path.unlink()
    with pytest.raises(SslpipeError, match=f"{path}: checkpoint file missing"):
        load_checkpoint(tmp_path)
