"""Runs in a real MLflow store: looked up by name whatever quote it holds; what a run records (its shard sets as
dataset inputs, its source, the experiment's kind, system metrics); the registered encoder, loaded without sslpipe."""

import importlib.metadata
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from pipeline.data import read_manifest
from pipeline.models import EncoderSpec, build_encoder
from pipeline.track import Tracker
from pipeline.track.tracker import fluent_api_at
from tests.helpers import WITHOUT_SSLPIPE

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["o'brien", 'say "cheese"', "plain"])
def test_a_run_name_with_a_quote_resumes_its_run(tracking_uri, name):
    tracker = Tracker(tracking_uri)
    run_id = tracker.start("sslpipe", name, {"train.name": name}, "train: {}\n")
    tracker.start("sslpipe", "another", {}, "")
    assert tracker.start("sslpipe", name, {"train.name": name}, "train: {}\n") == run_id  # unfinished: resumed
    assert tracker.find_run("sslpipe", name).info.run_id == run_id
    tracker.finish(run_id)
    assert tracker.start("sslpipe", name, {}, "") != run_id  # finished: a new run of that name
    assert tracker.find_run("sslpipe", name).info.run_id != run_id  # the latest


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns


def _checkout_commit() -> str | None:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def test_a_run_records_its_shards_source_and_the_training_kind(tracking_uri, synthetic_shards):
    tracker = Tracker(tracking_uri)
    manifest = read_manifest(synthetic_shards)
    run_id = tracker.start(
        "sslpipe",
        "run",
        {},
        "",
        entry_point="sslpipe pretrain",
        datasets={"training": (str(synthetic_shards), manifest)},
    )
    run = tracker.client.get_run(run_id)
    [used] = run.inputs.dataset_inputs
    assert used.dataset.name == synthetic_shards.name and used.dataset.source_type == "local"
    assert json.loads(used.dataset.source) == {"uri": str(synthetic_shards)}
    assert used.dataset.digest == manifest.digest()[:36]
    profile = json.loads(used.dataset.profile)
    assert profile["manifest_sha256"] == manifest.digest() and profile["num_samples"] == {"train": 3000, "test": 500}
    assert [(tag.key, tag.value) for tag in used.tags] == [("mlflow.data.context", "training")]
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "sslpipe pretrain" and tags["mlflow.source.type"] == "LOCAL"
    assert tags.get("mlflow.source.git.commit") == _checkout_commit()  # both None outside a git checkout
    experiment = tracker.client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's "Machine learning"

    # an experiment made before runs were marked gets the kind; one whose kind someone chose keeps it
    older = tracker.client.create_experiment("older")
    chosen = tracker.client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})
    tracker.start("older", "run", {}, "")
    tracker.start("chosen", "run", {}, "")
    assert tracker.client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracker.client.get_experiment(chosen).tags["mlflow.experimentKind"] == "finetuning"


def test_system_metrics_are_sampled_while_the_block_runs(tracking_uri):
    tracker = Tracker(tracking_uri)
    run_id = tracker.start("sslpipe", "run", {}, "")

    def cpu_history():
        return tracker.client.get_metric_history(run_id, "system/cpu_utilization_percentage")

    with tracker.system_metrics(run_id, interval_s=0.3):
        deadline, x = time.monotonic() + 20, torch.rand(256, 256)
        while len(cpu_history()) < 2 and time.monotonic() < deadline:  # sampled while the block runs
            for _ in range(20):
                x = torch.tanh(x @ x)
        assert len(cpu_history()) >= 2
    metrics = tracker.client.get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert max(m.value for m in cpu_history()) > 0
    assert metrics["system/system_memory_usage_megabytes"] > 0


LOAD_WITHOUT_SSLPIPE = (
    WITHOUT_SSLPIPE
    + """
import mlflow, torch
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pytorch.load_model(sys.argv[2])
assert model.eval() is model and not model.training
assert model.to("cpu") is model and all(p.device.type == "cpu" for p in model.parameters())
with torch.no_grad():
    torch.testing.assert_close(model(torch.load(sys.argv[3])), torch.load(sys.argv[4]))
try:
    model.train()
except NotImplementedError as error:
    assert "fine-tune" in str(error), error
else:
    raise AssertionError("train() gave no error")
assert not [name for name in sys.modules if name.split(".")[0] in ("pipeline", "augment")]
print("ok")
"""
)


@pytest.mark.slow  # a process of its own
def test_the_registered_encoder_loads_and_evals_without_sslpipe_and_pins_torch(tmp_path, tracking_uri):
    tracker = Tracker(tracking_uri)
    run_id = tracker.start("sslpipe", "run", {}, "")
    torch.manual_seed(0)
    encoder, _ = build_encoder(EncoderSpec("small_cnn", 1, 28, (0.3,), (0.35,), width=8, embed_dim=32))
    encoder.train()(torch.rand(16, 1, 28, 28))  # BatchNorm statistics away from their defaults
    program = io.BytesIO()
    torch.export.save(
        torch.export.export(
            encoder.eval(), (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch")},)
        ),
        program,
    )
    model_uri = tracker.log_encoder(
        run_id, program.getvalue(), torch.rand(2, 1, 28, 28), {"encoder.json": b"{}"}, "enc"
    )
    assert model_uri == "models:/enc/1"

    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.save(x, tmp_path / "x.pt")
        torch.save(encoder.eval()(x), tmp_path / "expected.pt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_WITHOUT_SSLPIPE,
            tracker.uri,
            model_uri,
            str(tmp_path / "x.pt"),
            str(tmp_path / "expected.pt"),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"

    with fluent_api_at(tracker.uri):
        requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert f"torch=={importlib.metadata.version('torch')}" in requirements
