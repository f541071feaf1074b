"""Faults for real: a Ray Train worker killed by PID mid-run, a driver stopped with SIGTERM and run again, a tracking
server that goes away mid-run. (The loop's own resume, every random stream continued, runs in-process in
tests/train/test_harness.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

from pipeline.commands.pretrain import pretrain
from pipeline.config import JobConfig, load_config
from pipeline.schedules import ema_momentum, warmup_cosine
from pipeline.track.epoch_log import NODES_TAG
from pipeline.train.checkpoint import CHECKPOINT_FILE
from pipeline.train.harness import train
from pipeline.train.pretraining import Pretraining
from tests.helpers import TINY_MODEL, kill_a_train_worker, rewrite_shard, when_epochs_logged
from tests.in_process import InProcess
from tests.processes import BIN, REPO, MlflowServer, gloo_ranks, wait_until

pytestmark = pytest.mark.slow
JOB = REPO / "jobs" / "byol_fashion_mnist.yaml"  # with the overrides below: a small BYOL run on synthetic shards
EPOCHS = 6  # the chain of faults' (about a second each): room for a restart, then a stop, before the last
OUTAGE_EPOCHS = 4  # (3 s each): two kept while the server is away


def _overrides(shards, name: str, epochs: int) -> list[str]:
    return [
        f"data.shards={shards}",
        "data.batch_size=64",
        "data.num_workers=1",
        *TINY_MODEL,
        f"train.epochs={epochs}",
        f"train.name={name}",
        "optim.warmup_epochs=0",
        "eval.baselines=false",
        "eval.probe_max_iter=50",
    ]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of ``key``, sorted; an epoch logged twice with the same value counts once."""
    return sorted({(m.step, m.value) for m in client.get_metric_history(run_id, key)})


def _starts(client: MlflowClient, run_id: str) -> set[float]:
    """The epochs that the run's attempts resumed after (``start_epoch``; 0: the first attempt)."""
    return {value for _, value in _history(client, run_id, "start_epoch")}


def _assert_one_continuous_run(client: MlflowClient, run_id: str, config: JobConfig) -> None:
    """Every epoch logged once, and the LR and BYOL momentum at each epoch's last step on the uninterrupted
    schedules (their counters continued through the restart)."""
    steps = _history(client, run_id, "step")
    assert [epoch for epoch, _ in steps] == list(range(EPOCHS))
    assert sorted({e for e, _ in _history(client, run_id, "loss")}) == list(range(EPOCHS))
    total = int(steps[-1][1])
    base_lr = config.optim.lr * config.data.batch_size * config.train.num_workers / 256  # linear scaling rule
    assert all(b[1] > a[1] for a, b in pairwise(steps))  # the step counter never went back
    for (epoch, lr), (_, step) in zip(_history(client, run_id, "lr"), steps, strict=True):
        assert lr == pytest.approx(base_lr * warmup_cosine(int(step), total, 1), rel=1e-6, abs=1e-12), epoch
    for (epoch, tau), (_, step) in zip(_history(client, run_id, "ema_tau"), steps, strict=True):
        assert tau == pytest.approx(ema_momentum(int(step), total, config.method.ema_base), rel=1e-9), epoch
    images = {value for _, value in _history(client, run_id, "images")}
    assert len(images) == 1  # every epoch read the whole split, the restarted ones too


def _uninterrupted(folder: str, shards: str) -> dict[str, np.ndarray]:
    """On this rank of a 2-process gloo group (as Ray Train's 2 workers run it): the chain's job trained whole,
    without Ray, its data read in this process (``data.num_workers=0``: the chain's loader process must not change a
    sample); the final model state, as numpy arrays."""
    session = InProcess(Path(folder))
    config = load_config(JOB, [*_overrides(shards, "uninterrupted", EPOCHS), "data.num_workers=0"])
    train(config, Pretraining(), session)
    return {key: value.numpy() for key, value in session.resume_state()["model"].items()}


def test_a_killed_worker_then_a_stopped_driver_resume_to_the_uninterrupted_model(
    ray_local, even_shards, tmp_path, workdir, tracking_uri
):
    """One run through every fault of a long job: `sslpipe pretrain` as a user runs it (here joined to this test's
    Ray), a Ray Train worker killed by PID once epoch 0 is logged (Ray restarts the workers from the last checkpoint,
    train.max_failures=1, and they log into the same MLflow run), then the driver stopped with SIGTERM once the
    restarted workers have logged an epoch, the checkpoint it would resume from damaged (a truncated file), and the
    same command again: it falls back to the checkpoint before, and ends with the weights of the same job trained
    without a fault (2 ranks of a gloo group, without Ray)."""
    client = MlflowClient(tracking_uri)
    overrides = [*_overrides(even_shards, "faults", EPOCHS), "train.max_failures=1"]
    env = os.environ | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    process = subprocess.Popen(
        [str(BIN / "sslpipe"), "pretrain", str(JOB), *overrides],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run_id = when_epochs_logged(tracking_uri, "faults", 1, process)
        kill_a_train_worker(ray_local)
        wait_until(lambda: len(_starts(client, run_id)) == 2, 300, "an epoch of the restarted workers")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 2 and "stopped by SIGTERM" in output and "rerun" in output, output[-2000:]
    assert client.get_run(run_id).info.status == "KILLED"
    [restarted] = _starts(client, run_id) - {0}
    # the checkpoint the rerun would resume from (Ray's latest registered one) damaged: it falls back to the newest
    # readable one before it
    folder = tmp_path / "ray_results" / "faults"
    registered = json.loads((folder / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).read_text())["latest_checkpoint_result"]
    latest = folder / registered["checkpoint_dir_name"] / CHECKPOINT_FILE
    earlier = max(path for path in folder.glob(f"checkpoint_*/{CHECKPOINT_FILE}") if path < latest)
    stopped_at, fallback = torch.load(latest)["epoch"], torch.load(earlier)["epoch"]
    latest.write_bytes(latest.read_bytes()[:1000])
    config = load_config(JOB, overrides)
    resumed = pretrain(config, register=False)
    [run] = client.search_runs(["1"])  # one run: the restarted workers and the rerun logged into it
    assert run.info.run_id == resumed.run_id == run_id and run.info.status == "FINISHED"
    assert _starts(client, run_id) == {0, restarted, fallback} and stopped_at < EPOCHS  # the epochs resumed after
    _assert_one_continuous_run(client, run_id, config)

    metrics = client.get_run(run_id).data.metrics
    assert metrics["probe_accuracy"] > 0.8 and metrics["knn_accuracy"] > 0.8  # measured 1.0, 0.95; chance 0.1
    assert "latent_scatter.png" in {a.path for a in client.list_artifacts(run_id)}

    # resuming restores weights, optimizer, LR and momentum schedules and the data and augmentation streams exactly:
    # the faults left no trace in the weights (bit for bit: on CPUs, gloo's reduction order is fixed)
    expected, _ = gloo_ranks(_uninterrupted, str(tmp_path / "uninterrupted"), str(even_shards))
    ended = torch.load(max(folder.glob(f"checkpoint_*/{CHECKPOINT_FILE}")))
    assert ended["epoch"] == EPOCHS
    assert ended["model"].keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(ended["model"][key], torch.from_numpy(value), rtol=0, atol=0, msg=key)


def test_a_tracking_server_outage_and_bad_samples_lose_nothing(
    ray_local, synthetic_shards, tmp_path, tracking_uri, monkeypatch
):
    """A real `mlflow server` stopped after epoch 0 and started again a few epochs later: training goes on, the
    epochs in between wait in a local file, and the run ends with every epoch logged exactly once. The shards hold
    an undecodable chunk of 256 images, skipped (data.skip_bad_samples) and counted in every epoch's metrics."""
    monkeypatch.chdir(tmp_path)
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    rewrite_shard(
        shards,
        "train-000001.tar",
        lambda member, data: b"not a png" if member == "train-chunk-00000256.images.png" else data,
    )
    server = MlflowServer(tmp_path)  # its store: tmp_path/mlflow.db, migrated already (``tracking_uri``)
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    config = load_config(
        JOB,
        [
            *_overrides(shards, "outage", OUTAGE_EPOCHS),
            "train.num_workers=1",
            "track.server_wait_s=120",
            "data.skip_bad_samples=true",
        ],
    )
    unsent = tmp_path / "ray_results" / "outage" / "mlflow_unsent.json"
    kept: list[dict] = []

    def outage() -> None:
        when_epochs_logged(server.url, "outage", 1)
        server.stop()
        wait_until(lambda: unsent.exists() and len(json.loads(unsent.read_text())) >= 2, 120, "two epochs kept")
        kept.extend(json.loads(unsent.read_text()))
        server.start()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        summary = pretrain(
            config, register=False
        )  # ends once the server is back: the driver sends what is left, then evaluates
        thread.join(timeout=60)
        assert [entry["step"] for entry in kept[:2]] == [1, 2]  # kept in order while the server was away
        client = MlflowClient(server.url)
        run = client.get_run(summary.run_id)
        assert run.info.status == "FINISHED" and not unsent.exists()
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(OUTAGE_EPOCHS))
        assert {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "skipped_samples")} == {
            (epoch, 256) for epoch in range(OUTAGE_EPOCHS)
        }
        assert {m.value for m in client.get_metric_history(run.info.run_id, "images")} == {3000 // 64 * 64}
        assert run.data.tags[NODES_TAG] and "probe_accuracy" in run.data.metrics
    finally:
        server.stop()
