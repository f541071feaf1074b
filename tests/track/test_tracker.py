"""Runs looked up by name in a real MLflow store, whatever quote the name holds."""

import pytest

from pipeline.track import Tracker


@pytest.mark.parametrize("name", ["o'brien", 'say "cheese"', "plain"])
def test_a_run_name_with_a_quote_resumes_its_run(tmp_path, name):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start("sslpipe", name, {"train.name": name}, "train: {}\n")
    tracker.start("sslpipe", "another", {}, "")
    assert tracker.start("sslpipe", name, {"train.name": name}, "train: {}\n") == run_id  # unfinished: resumed
    assert tracker.find_run("sslpipe", name).info.run_id == run_id
    tracker.finish(run_id)
    assert tracker.start("sslpipe", name, {}, "") != run_id  # finished: a new run of that name
    assert tracker.find_run("sslpipe", name).info.run_id != run_id  # the latest
