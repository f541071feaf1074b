"""The cluster path for real: a Ray head and a second Ray node started with ``ray start`` on 127.0.0.1 with token
authentication, shards written to and read from a local S3 server (moto), and the README's ``ray job submit``."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from pipeline.data import open_source, read_manifest, write_shards
from pipeline.errors import ShardError
from pipeline.track.epoch_log import NODES_TAG
from tests.helpers import TINY_MODEL
from tests.processes import BIN, REPO, S3Server, clean_env, ray_cluster, s3_server

pytestmark = pytest.mark.slow
BUCKET = "sslpipe-test"
TRAIN_SAMPLES = 1024


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Server:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def s3_shards(s3) -> str:
    """Shards written by ``sslpipe shard --out s3://...``: 4 train shards of 256, 1 test shard."""
    url = f"s3://{BUCKET}/shards/synthetic"
    run = subprocess.run(
        [
            str(BIN / "sslpipe"),
            "shard",
            "synthetic",
            "--out",
            url,
            f"--num-train={TRAIN_SAMPLES}",
            "--num-test=256",
            "--samples-per-shard=256",
        ],
        env=clean_env(**s3.env),
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    return url


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """Two nodes of one CPU each, so a 2-worker run must put one Ray Train worker on each; the nodes hold the S3
    credentials, as instance roles would on a cloud."""
    with ray_cluster(tmp_path_factory.mktemp("cluster"), cpus_per_node=(1, 1), env=s3.env) as running:
        yield running


def test_shards_on_s3_verify(s3, s3_shards):
    objects = s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in objects)
    assert names == ["manifest.json", "test-000000.tar", *(f"train-{i:06d}.tar" for i in range(4))]
    run = subprocess.run(
        [str(BIN / "sslpipe"), "verify", s3_shards],
        env=clean_env(**s3.env),
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "5 shards match" in run.stdout, run.stderr


def test_job_submission_without_the_token_is_refused(cluster, tmp_path):
    submit = [str(BIN / "ray"), "job", "submit", f"--address={cluster.dashboard}", "--", "echo", "hello"]
    for env in (
        clean_env(HOME=str(tmp_path)),  # no token anywhere (not even ~/.ray/auth_token)
        clean_env(HOME=str(tmp_path), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token"),
    ):
        refused = subprocess.run(submit, env=env, check=False, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0
        assert re.search(r"401|[Uu]nauthori[sz]ed|[Aa]uthentication", refused.stdout + refused.stderr)
    accepted = subprocess.run(
        submit, env=cluster.client_env(), check=False, capture_output=True, text=True, timeout=120
    )
    assert accepted.returncode == 0 and "hello" in accepted.stdout, accepted.stdout + accepted.stderr


def submitted(cluster, command: list[str]) -> None:
    """Run ``command`` (a ``ray job submit``) from the repository against ``cluster``; assert the job succeeded."""
    run = subprocess.run(
        command,
        cwd=REPO,
        env=cluster.client_env(RAY_ADDRESS=cluster.dashboard),
        check=False,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert run.returncode == 0 and "succeeded" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def readme_submit_command() -> str:
    """The ``ray job submit`` command of the README's local cluster example, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- tested by tests/test_cluster.py -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = block[block.index("ray job submit") :]
    return command.split("\n\n", 1)[0].replace("\\\n", " ").strip()


def test_readme_job_trains_on_two_nodes_from_s3(cluster, s3, s3_shards, tmp_path):
    # the README's command as written, from the repository, plus overrides for a tiny run whose outputs land here;
    # its checkpoints go where both nodes' Ray Train workers reach them, the bucket
    overrides = [
        f"data.shards={s3_shards}",
        "data.batch_size=64",
        *TINY_MODEL,
        "train.epochs=1",
        "train.name=submitted",
        "eval.baselines=false",
        "eval.probe_max_iter=100",
        f"track.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"export.out_dir={tmp_path}/exports",
        f"train.storage_path=s3://{BUCKET}/ray_results",
    ]
    submitted(cluster, ["bash", "-c", f"{readme_submit_command()} {shlex.join(overrides)}"])

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [found] = client.search_runs(["1"], "tags.`sslpipe.run_name` = 'submitted'")
    assert found.info.status == "FINISHED" and found.data.metrics["probe_accuracy"] > 0.8  # measured 1.0
    nodes = found.data.tags[NODES_TAG].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2  # rank 0 and rank 1 ran on different nodes
    assert found.data.metrics["images"] == TRAIN_SAMPLES  # both ranks' shares of the S3 shards, nothing missing
    assert (tmp_path / "exports" / "submitted" / "encoder.safetensors").exists()
    stored = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="ray_results/submitted/")["Contents"]
    checkpoint = re.compile(r"ray_results/submitted/checkpoint_[\d_.-]+/checkpoint\.pt")
    assert len([o for o in stored if checkpoint.fullmatch(o["Key"])]) == 1, stored  # the epoch's, by rank 0


def test_resharding_on_s3_needs_overwrite_and_never_leaves_a_stale_manifest(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{BUCKET}/reshard"
    write_shards(open_source("synthetic", num_train=600, num_test=100), url, samples_per_shard=200, progress=False)
    with pytest.raises(ShardError, match=f"{url} already holds shards.*--overwrite"):
        write_shards(open_source("synthetic", num_train=600, num_test=100), url, progress=False)

    def load(indices):
        raise KeyboardInterrupt  # the writer dies on its first image

    broken = open_source("synthetic", num_train=600, num_test=100)
    broken.splits["train"].load = load
    with pytest.raises(KeyboardInterrupt):
        write_shards(broken, url, samples_per_shard=300, overwrite=True, progress=False)
    with pytest.raises(ShardError, match=re.escape("manifest.json not found")):
        read_manifest(url)  # the old manifest went first: nothing there looks whole

    write_shards(
        open_source("synthetic", num_train=600, num_test=100),
        url,
        samples_per_shard=300,
        overwrite=True,
        progress=False,
    )
    names = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="reshard/")["Contents"])
    assert names == [
        f"reshard/{name}" for name in ("manifest.json", "test-000000.tar", "train-000000.tar", "train-000001.tar")
    ]  # train-000002.tar of the first write: gone
    assert read_manifest(url).splits["train"].num_samples == 600


def test_a_search_keeps_its_state_and_exports_on_s3_and_resumes_from_there(cluster, s3, s3_shards, tmp_path):
    """`sslpipe tune` submitted to the cluster with checkpoints, Tune's state and exports under s3:// URLs: the
    trial's encoder lands in the bucket, the best is registered from there, and the same command again finds the
    finished search in the bucket and runs nothing. (One trial, trained in its Tune process: ranking trials and a
    trial that drives Ray Train workers are tests/test_search.py's, Ray Train workers across nodes the job above's.)"""
    overrides = [
        "search.name=s3-search",
        "search.space={eval.probe_max_iter: {grid: [50]}}",
        f"data.shards={s3_shards}",
        "data.batch_size=64",
        "data.num_workers=0",
        *TINY_MODEL,
        "train.epochs=1",
        "train.num_workers=0",
        f"train.storage_path=s3://{BUCKET}/ray_results",
        f"export.out_dir=s3://{BUCKET}/exports",
        "eval.online_knn=400",
        "eval.knn_k=20",
        f"track.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--working-dir",
        ".",
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--",
        "sslpipe",
        "tune",
        "jobs/search_simclr_fashion_mnist.yaml",
        *overrides,
    ]

    submitted(cluster, command)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [parent] = client.search_runs(["1"], "tags.`sslpipe.run_name` = 's3-search'")
    children = client.search_runs(["1"], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and len(children) == 1
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(key.startswith("ray_results/s3-search/") for key in keys)  # Tune's state, beside the checkpoints
    exports = sorted(key for key in keys if key.startswith("exports/s3-search-") and key.endswith("/encoder.pt2"))
    assert len(exports) == 1, keys
    version = client.get_model_version("sslpipe-encoder", "1")
    assert version.run_id == parent.data.tags["sslpipe.best_run_id"]

    submitted(
        cluster, command
    )  # the same command: restored from the bucket, nothing runs again, nothing is registered twice
    assert {
        r.info.run_id: r.info.end_time
        for r in client.search_runs(["1"], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    } == {r.info.run_id: r.info.end_time for r in children}
    assert len(client.search_model_versions("name = 'sslpipe-encoder'")) == 1
