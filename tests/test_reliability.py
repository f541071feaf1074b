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

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.commands.pretrain import pretrain
from pipeline.config import JobConfig, load_config
from pipeline.export import load_encoder
from pipeline.schedules import ema_momentum, warmup_cosine
from pipeline.track.epoch_log import NODES_TAG
from tests.helpers import TINY_MODEL, kill_a_train_worker, rewrite_shard, when_epochs_logged
from tests.processes import BIN, REPO, MlflowServer, wait_until

pytestmark = pytest.mark.slow
EPOCHS = 4
JOB = REPO / "jobs" / "byol_fashion_mnist.yaml"  # with the overrides below: a small BYOL run on synthetic shards


def _overrides(shards, name: str) -> list[str]:
    return [
        f"data.shards={shards}",
        "data.batch_size=64",
        "data.num_workers=1",
        *TINY_MODEL,
        f"train.epochs={EPOCHS}",
        f"train.name={name}",
        "optim.warmup_epochs=0",
        "eval.baselines=false",
        "eval.probe_max_iter=50",
    ]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of ``key``, sorted; an epoch logged twice with the same value counts once."""
    return sorted({(m.step, m.value) for m in client.get_metric_history(run_id, key)})


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


def test_a_killed_worker_and_a_stopped_driver_both_resume_to_the_same_model(
    ray_local, synthetic_shards, tmp_path, workdir, tracking_uri
):
    client = MlflowClient(tracking_uri)

    # 1. a Ray Train worker process killed by PID once epoch 0 is logged: Ray restarts the workers from the
    #    last checkpoint (train.max_failures=1) and they go on logging into the same MLflow run
    config = load_config(JOB, [*_overrides(synthetic_shards, "killed"), "train.max_failures=1"])
    killed: list[int] = []
    killer = kill_a_train_worker(ray_local, lambda: when_epochs_logged(tracking_uri, "killed", 1), killed)
    restarted = pretrain(config, register=False)
    killer.join(timeout=10)
    assert killed, "no worker was killed"
    [run] = client.search_runs(["1"])  # one run: the restarted workers logged into it
    assert run.info.run_id == restarted.run_id and run.info.status == "FINISHED"
    assert max(value for _, value in _history(client, run.info.run_id, "start_epoch")) >= 1  # resumed, not redone
    _assert_one_continuous_run(client, run.info.run_id, config)

    # 2. `sslpipe pretrain` as a user runs it (here joined to this test's Ray), stopped with SIGTERM after 2
    #    epochs, then the same command again
    overrides = _overrides(synthetic_shards, "stopped")
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
        run_id = when_epochs_logged(tracking_uri, "stopped", 2, process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 2 and "stopped by SIGTERM" in output and "rerun" in output, output[-2000:]
    assert client.get_run(run_id).info.status == "KILLED"
    stopped_at = max(value for _, value in _history(client, run_id, "epoch")) + 1
    # and the checkpoint it would resume from damaged (a truncated file): the rerun falls back to the one before
    [last] = [
        path
        for path in (tmp_path / "ray_results" / "stopped").glob("checkpoint_*/checkpoint.pt")
        if torch.load(path, weights_only=True)["epoch"] == stopped_at
    ]
    last.write_bytes(last.read_bytes()[:1000])
    resumed = pretrain(load_config(JOB, overrides), register=False)
    assert resumed.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert max(value for _, value in _history(client, run_id, "start_epoch")) == stopped_at - 1
    assert 1 < stopped_at < EPOCHS  # (the epoch rerun from the earlier checkpoint repeats its metrics exactly)
    _assert_one_continuous_run(client, run_id, config)

    metrics = client.get_run(run_id).data.metrics
    assert metrics["probe_accuracy"] > 0.8 and metrics["knn_accuracy"] > 0.8  # measured 1.0, 0.99; chance 0.1
    assert "latent_scatter.png" in {a.path for a in client.list_artifacts(run_id)}

    # the two runs were interrupted at different epochs, and both resumed to the same encoder: resuming restores
    # weights, optimizer, LR and momentum schedules and the data and augmentation streams exactly (up to float
    # reduction order, which is deterministic on CPUs with gloo)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeddings = load_encoder(resumed.export_dir).eval()(x)
        torch.testing.assert_close(embeddings, load_encoder(restarted.export_dir).eval()(x), rtol=1e-4, atol=1e-5)
    assert embeddings.shape == (16, 32)


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
        [*_overrides(shards, "outage"), "train.num_workers=1", "track.server_wait_s=120", "data.skip_bad_samples=true"],
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
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(EPOCHS))
        assert {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "skipped_samples")} == {
            (epoch, 256) for epoch in range(EPOCHS)
        }
        assert {m.value for m in client.get_metric_history(run.info.run_id, "images")} == {3000 // 64 * 64}
        assert run.data.tags[NODES_TAG] and "probe_accuracy" in run.data.metrics
    finally:
        server.stop()
