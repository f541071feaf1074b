"""Epochs that the tracking server cannot take wait in an outbox file and go out in order once it answers."""

import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import SslpipeError
from pipeline.track import Tracker
from pipeline.track.epoch_log import Outbox, send_unsent
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
