"""The session of a run that trains in this process (``train.num_workers: 0``): its checkpoints in storage, the
newest two kept, a damaged newest one passed over on resume, and every report handed to the Ray Train callbacks as
Ray Train's controller hands them."""

import logging
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.train.checkpoint import CHECKPOINT_FILE
from pipeline.train.harness import train
from pipeline.train.pretraining import Pretraining
from pipeline.train.session import WORKER_NODES, InProcessSession


class Recorder:
    """A Ray Train callback that keeps what it was handed."""

    def __init__(self) -> None:
        self.calls = []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.calls.append((metrics, checkpoint.path, checkpoint.get_metadata()))


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_checkpoints_are_stored_kept_two_deep_resumed_and_reported_to_the_callbacks(synthetic_shards, tmp_path, caplog):
    config = load_config(
        None,
        [
            f"data.shards={synthetic_shards}",
            "data.batch_size=64",
            "data.num_workers=0",
            "model.width=4",
            "model.embed_dim=8",
            "train.epochs=3",
            "train.max_steps_per_epoch=2",
        ],
    )
    recorder = Recorder()
    session = InProcessSession(str(tmp_path / "run"), callbacks=[recorder])
    train(config, Pretraining(), session)

    assert [metrics["epoch"] for [metrics], _, _ in recorder.calls] == [0, 1, 2]
    reported = [path for _, path, _ in recorder.calls]  # in Ray Train's naming: checkpoint_<date and time>
    assert sorted(reported) == reported and all(path.rsplit("/", 1)[1].startswith("checkpoint_20") for path in reported)
    assert session.checkpoints() == reported[1:]  # the newest two kept
    assert all(len(metadata[WORKER_NODES]) == 1 for _, _, metadata in recorder.calls)  # this process's machine
    assert session.resume_state()["epoch"] == 3  # the state after the last epoch

    newest = Path(reported[-1]) / CHECKPOINT_FILE
    newest.write_bytes(newest.read_bytes()[:1000])  # damaged: a rerun falls back to the one before
    with caplog.at_level(logging.WARNING):
        assert InProcessSession(str(tmp_path / "run")).resume_state()["epoch"] == 2
    assert reported[-1] in caplog.text and "resuming from the earlier checkpoint" in caplog.text
    assert InProcessSession(str(tmp_path / "none")).resume_state() is None  # nothing stored: a fresh start
