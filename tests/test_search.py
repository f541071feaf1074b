"""Ray Tune searches on a real local Ray and a real MLflow store: nested runs, early stopping, best trial, resume."""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from mlflow.tracking import MlflowClient
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

from pipeline.commands.pretrain import pretrain
from pipeline.commands.tune import tune
from pipeline.config import load_config, with_values
from pipeline.errors import ConfigError
from pipeline.search.space import SearchConfig, load_search
from pipeline.track.tracker import RUN_NAME_TAG
from tests.helpers import TINY_MODEL


def _overrides(shards):
    return [
        f"data.shards={shards}",
        "data.batch_size=64",
        "data.num_workers=0",
        *TINY_MODEL,
        "train.epochs=2",
        "train.num_workers=0",  # each trial trains in its own Tune process (Ray Train workers: the ASHA test's)
        "eval.baselines=false",
        "eval.probe_max_iter=100",
        "eval.online_knn=400",
        "eval.knn_k=20",
    ]


@pytest.fixture
def config(synthetic_shards, workdir):
    return load_config(None, _overrides(synthetic_shards))


def _children(client, parent_run_id):
    return client.search_runs(["1"], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


@pytest.mark.slow
def test_a_search_over_methods_stops_the_weak_trial_early_and_gives_each_trial_only_its_own_options(
    ray_local, config, tmp_path, monkeypatch
):
    """Method branches under ASHA. ASHA's metric is rigged: the learning rate itself, so the SimCLR trial at 1e-3,
    run after the VAE at 1e-2, trails it at the first rung for sure and is stopped; the VAE finishes and is the
    best. Each trial records only its own method's options. The SimCLR trial drives a Ray Train worker group (the
    default way a trial trains), so Tune's stop reaches through it; the VAE trains in its Tune process."""
    space = {
        "method": {
            "vae": {"augment.preset": "none", "method.bottleneck": {"grid": [4]}, "optim.lr": 1e-2},
            "simclr": {
                "method.temperature": {"grid": [0.2]},
                "optim.lr": 1e-3,
                "train.num_workers": 1,  # this trial drives a Ray Train worker group, stopped by Tune with it
            },
        }
    }
    search = SearchConfig(space=space, early_stop_metric="lr", max_concurrent_trials=1, name="rigged")
    config.train.epochs = 4  # ASHA decides at the first report; a trial runs on until Tune's stop reaches it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    summary = tune(config, search, pretrain)
    assert not list((tmp_path / "tmp").glob("sslpipe-*"))  # the search's own temporary folders are gone
    client = MlflowClient(summary.tracking_uri)
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_stopped_early"] == 1
    children = {run.data.params["method.name"]: run for run in _children(client, summary.parent_run_id)}
    assert {name: float(run.data.params["optim.lr"]) for name, run in children.items()} == {
        "vae": 1e-2,
        "simclr": 1e-3,
    }  # recorded exactly
    assert children["vae"].info.status == "FINISHED" and "recon_mse" in children["vae"].data.metrics  # a VAE
    ray_train_runs = {
        name
        for name, run in children.items()
        if (tmp_path / "ray_results" / run.data.tags[RUN_NAME_TAG] / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).exists()
    }
    assert ray_train_runs == {"simclr"}  # Ray Train's controller kept this trial's checkpoints, not the VAE's
    stopped = children["simclr"]
    assert stopped.info.status == "KILLED" and "probe_accuracy" not in stopped.data.metrics
    logged = sorted(m.step for m in client.get_metric_history(stopped.info.run_id, "loss"))
    assert logged == list(range(len(logged))) and 1 <= len(logged) < 4  # stopped before its last epoch

    params = {name: run.data.params for name, run in children.items()}
    method_keys = {name: {key for key in values if key.startswith("method.")} for name, values in params.items()}
    assert method_keys == {
        "simclr": {"method.name", "method.temperature"},
        "vae": {
            "method.name",
            "method.bottleneck",
            "method.beta",
            "method.kl_anneal_steps",
            "method.free_bits",
            "method.likelihood",
        },
    }  # decoder_std: Gaussian only
    assert params["simclr"]["method.temperature"] == "0.2" and params["simclr"]["augment.preset"] == "simclr"
    assert params["vae"]["method.bottleneck"] == "4" and params["vae"]["augment.preset"] == "none"
    assert "model.head_dim" in params["simclr"] and "model.head_dim" not in params["vae"]  # no heads: not its key
    rows = {row["method.name"]: row for row in summary.trials}
    assert [rows[name]["status"] for name in ("vae", "simclr")] == ["finished", "stopped early"]
    assert rows["vae"]["method.temperature"] is None and rows["simclr"]["method.bottleneck"] is None
    assert summary.best["method.name"] == "vae" and summary.model_uri == "models:/sslpipe-encoder/1"


SEARCH_SCRIPT = """
import sys
from pipeline.commands.pretrain import pretrain
from pipeline.commands.tune import tune
from pipeline.config import load_config
from pipeline.search.space import SearchConfig
search = SearchConfig(space={"eval.probe_max_iter": {"grid": [1, 100]}}, grace_period=10, max_concurrent_trials=1,
                      name="interrupted")
tune(load_config(None, sys.argv[1:]), search, pretrain)
"""


@pytest.mark.slow
def test_an_interrupted_search_resumes_ranks_and_registers_the_best(ray_local, config, synthetic_shards, tmp_path):
    # a search in its own driver process (joined to this test's Ray), interrupted as Ctrl-C would once trial 2 began
    env = os.environ | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    process = subprocess.Popen(
        [sys.executable, "-c", SEARCH_SCRIPT, *_overrides(synthetic_shards)],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while (
            not list((tmp_path / "exports").glob("interrupted-*/encoder.json"))
            or len(list((tmp_path / "ray_results").glob("interrupted-*"))) < 2
        ):
            assert process.poll() is None and time.monotonic() < deadline, "the search ended or hung before trial 2"
            time.sleep(1)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of its own that outlived it
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [parent] = client.search_runs(["1"], "tags.`sslpipe.run_name` = 'interrupted'")
    assert parent.info.status == "KILLED"
    children = _children(client, parent.info.run_id)
    assert sorted(r.info.status for r in children) == ["FINISHED", "KILLED"]  # trial 2 was stopped, not lost
    finished_before = {r.info.run_id: r.info.end_time for r in children if r.info.status == "FINISHED"}

    # rigged ranking: a probe allowed 1 L-BFGS iteration (trial 1) trails one allowed 100 (trial 2)
    search = SearchConfig(
        space={"eval.probe_max_iter": {"grid": [1, 100]}}, grace_period=10, max_concurrent_trials=1, name="interrupted"
    )
    summary = tune(config, search, pretrain)  # the same command again: Tune restores the search
    assert summary.parent_run_id == parent.info.run_id
    children = _children(client, parent.info.run_id)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.info.run_id: r.info.end_time for r in children if r.info.run_id in finished_before} == finished_before
    assert [row["status"] for row in summary.trials] == ["finished", "finished"]

    probes = {r.info.run_id: r.data.metrics["probe_accuracy"] for r in children}
    assert len(set(probes.values())) == 2 and summary.best["mlflow_run_id"] == max(probes, key=probes.get)
    assert summary.best["eval.probe_max_iter"] == 100
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sslpipe.best_run_id"] == summary.best["mlflow_run_id"]
    assert parent.data.metrics["best_probe_accuracy"] == pytest.approx(max(probes.values()))
    assert {"trials.csv", "search.png", "search.yaml", "best_params.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    version = client.get_model_version("sslpipe-encoder", summary.model_uri.rsplit("/", 1)[1])
    assert version.run_id == summary.best["mlflow_run_id"]
    # a finished search run again runs nothing and registers nothing twice: tests/test_cluster.py, from a bucket


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "search:\n  space:\n    method.temprature: {grid: [0.1]}\n",
            r"search.space.method.temprature: unknown key 'method.temprature'",
        ),
        (
            "search:\n  space:\n    optim.lr: {loguniform: [0.0, 1.0]}\n",
            r"search.space.optim.lr.loguniform: low must be > 0",
        ),
        (
            "search:\n  space:\n    train.epochs: {grid: [1, two]}\n",
            r"search.space.train.epochs.*expected int, got 'two'",
        ),
        (
            "search:\n  space:\n    optim.lr: {normal: [0, 1]}\n",
            r"search.space.optim.lr: expected one of \{grid: \[...\]\}",
        ),
        ("train:\n  epochs: 1\n", "a search file needs a `search` section"),
        ("search:\n  name: 'it''s \"x\"'\n  space:\n    optim.lr: {grid: [0.1]}\n", "search.name: .* holds both ' and"),
    ],
)
def test_search_files_name_the_bad_key(tmp_path, text, message):
    path = tmp_path / "search.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_search(path)


def test_search_file_refines_its_base_job(tmp_path):
    (tmp_path / "base.yaml").write_text("method:\n  name: vae\n  beta: 2.0\ntrain:\n  epochs: 9\n")
    (tmp_path / "search.yaml").write_text(
        "search:\n  base: base.yaml\n  space:\n    method.beta: {choice: [1.0, 4.0]}\ntrain:\n  epochs: 2\n"
    )
    config, search = load_search(tmp_path / "search.yaml", ["search.num_samples=3"])
    assert (config.method.name, config.method.beta, config.train.epochs) == ("vae", 2.0, 2)
    assert search.num_samples == 3 and search.space == {"method.beta": {"choice": [1.0, 4.0]}}


BRANCHED = """
search:
  base: base.yaml
  space:
    optim.lr: {grid: [1.0e-3, 2.0e-3]}
    method:
      simclr:
        method.temperature: {grid: [0.1, 0.5]}
      vae:
        augment.preset: none
        method.beta: {choice: [1.0, 4.0]}
"""


def test_method_branches_give_each_trial_only_its_own_options(tmp_path):
    from ray.tune.search.variant_generator import generate_variants

    from pipeline.search.space import grid_points, trial_values, tune_space

    (tmp_path / "base.yaml").write_text("method:\n  name: simclr\n  temperature: 0.2\n")
    (tmp_path / "search.yaml").write_text(BRANCHED)
    config, search = load_search(tmp_path / "search.yaml")
    assert search.varied_keys() == ["optim.lr", "method.name", "method.temperature", "augment.preset", "method.beta"]
    trials = [trial_values(params) for _, params in generate_variants(tune_space(search.space))]  # Tune's expansion
    assert len(trials) == grid_points(search.space) == 2 * (2 + 1)
    for values in trials:
        trial = with_values(config, values, "trial")
        method_keys = {key for key in trial.flat() if key.startswith("method.")}
        if values["method.name"] == "simclr":
            assert method_keys == {"method.name", "method.temperature"} and trial.augment.preset == "simclr"
        else:
            assert "method.temperature" not in method_keys and trial.method.beta in (1.0, 4.0)
            assert trial.augment.preset == "none"
    assert sorted(v["method.temperature"] for v in trials if "method.temperature" in v) == [0.1, 0.1, 0.5, 0.5]


@pytest.mark.parametrize(
    ("base", "space", "message"),
    [
        (
            "byol",
            "    method.temperature: {grid: [0.1]}\n",
            "search.space.method.temperature: method.temperature does not apply to byol; byol takes ema_base",
        ),
        (
            "simclr",
            "    method.name: {grid: [simclr, byol]}\n",
            "search.space.method.name: vary the method with branches",
        ),
        (
            "simclr",
            "    method:\n      byol:\n        method.temperature: {grid: [0.1]}\n",
            (
                "search.space.method.byol.method.temperature: "
                "method.temperature does not apply to byol; byol takes ema_base"
            ),
        ),
        (
            "vae",
            "    method:\n      simclr: {}\n",
            "search.space.method.simclr.*augment.preset: none cannot serve simclr",
        ),
        ("simclr", "    method:\n      moco: {}\n", "search.space.method.moco: unknown method 'moco'"),
        (
            "autoencoder",
            (
                "    model.encoder: {grid: [linear, small_cnn]}\n    method:\n      autoencoder: {}\n"
                "      simclr: {augment.preset: simclr}\n"
            ),
            "search.space.model.encoder \\(with method simclr\\): model.encoder: linear needs",
        ),
        (
            "simclr",
            "    method.temperature: {grid: [0.1]}\n    method:\n      byol: {}\n",
            "search.space.method.temperature: with method branches, a method's options go in its branch",
        ),
    ],
)
def test_a_search_space_naming_options_its_trials_lack_is_refused(tmp_path, base, space, message):
    preset = "none" if base == "vae" else "simclr"
    (tmp_path / "base.yaml").write_text(f"method:\n  name: {base}\naugment:\n  preset: {preset}\n")
    (tmp_path / "search.yaml").write_text(f"search:\n  base: base.yaml\n  space:\n{space}")
    with pytest.raises(ConfigError, match=message):
        load_search(tmp_path / "search.yaml")
