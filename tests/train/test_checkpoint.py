import random

import numpy as np
import pytest
import torch

from pipeline.errors import SslpipeError
from pipeline.train.checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state


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


def test_random_state_round_trips_through_a_checkpoint(tmp_path):
    """torch's, numpy's and Python's global generators continue, after a save and a ``weights_only`` load, the
    stream they would have drawn."""
    device = torch.device("cpu")
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(tmp_path / CHECKPOINT_FILE, {"rng": [rng_state(device)]})
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_checkpoint(tmp_path)["rng"][0], device)
    drawn = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1]) and drawn[2] == expected[2]
