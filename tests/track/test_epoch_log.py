"""Epochs that the tracking server cannot take wait in an outbox file and go out in order once it answers."""

import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import SslpipeError
from pipeline.track import Tracker
from pipeline.track.epoch_log import EpochMetricsToMlflow, Outbox, send_unsent
from pipeline.train.checkpoint import CHECKPOINT_FILE, save_checkpoint
from tests.processes import free_port


def test_unsent_epochs_survive_the_process_and_go_out_in_order(tmp_path, tracking_uri):
    path = tmp_path / "run" / "mlflow_unsent.json"
    down = Tracker(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    outbox = Outbox(path)
    for epoch in range(3):
        outbox.add(epoch, {"loss": 3.0 - epoch}, {"sslpipe.worker_nodes": "a,b"} if epoch == 0 else {})
        assert not outbox.send(down, "run-id")
    with pytest.raises(SslpipeError, match=r"still unreachable after 0 s: the metrics of 3 epoch\(s\) are kept in "):
        send_unsent(down, "run-id", path, wait_s=0)

    tracker = Tracker(tracking_uri)
    run_id = tracker.client.create_run(tracker.client.create_experiment("e")).info.run_id
    send_unsent(tracker, run_id, path, wait_s=0)  # what the controller left behind, sent by another process
    history = sorted(MlflowClient(tracker.uri).get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert [m.timestamp for m in history] == sorted(m.timestamp for m in history)  # sent in order
    assert tracker.tags(run_id)["sslpipe.worker_nodes"] == "a,b" and not path.exists()


def _stored(folder, epochs: int, loss: float):
    """A Ray Train checkpoint in ``folder`` after ``epochs`` epochs whose report had ``loss``."""
    from ray.train import Checkpoint

    directory = folder / f"checkpoint_2026-01-01_00-00-{epochs:02d}"
    directory.mkdir(parents=True)
    metrics = {"epoch": epochs - 1, "loss": loss, "start_epoch": 0}
    save_checkpoint(directory / CHECKPOINT_FILE, {"epoch": epochs, "metrics": metrics})
    return Checkpoint(str(directory)), metrics


def test_a_rerun_logs_first_the_epoch_it_resumed_after_when_a_stop_kept_it_from_mlflow(tmp_path, tracking_uri):
    """Epoch 1's checkpoint was registered, then the run stopped before its metrics were sent: the rerun, resumed
    after it, logs it from the checkpoint before its own first epoch; an epoch already logged is not sent twice."""
    tracker = Tracker(tracking_uri)
    run_id = tracker.client.create_run(tracker.client.create_experiment("e")).info.run_id
    _, first = _stored(tmp_path / "run", 1, 3.0)
    _stored(tmp_path / "run", 2, 2.0)
    tracker.log_metrics(run_id, first, step=0)
    checkpoint, third = _stored(tmp_path / "run", 3, 1.0)
    for attempt in range(2):  # the rerun, then a second one resumed after the same epoch
        logger = EpochMetricsToMlflow(tracking_uri, run_id, str(tmp_path / "run" / "unsent.json"))
        logger.after_report(None, [third | {"start_epoch": 2}], checkpoint)
        history = sorted(
            MlflowClient(tracking_uri).get_metric_history(run_id, "loss"), key=lambda m: (m.timestamp, m.step)
        )
        assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.0), (2, 1.0)][: 3 + attempt]
