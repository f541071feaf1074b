"""The pure parts of the benchmarks and what they added to the pipeline: the step cap, the shared training step,
interleaving, memory sampling and the peer's per-image views."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import psutil
import pytest
import torch

from benchmarks.common import MIB, RssSampler, footprint, interleaved, rss_summary
from benchmarks.lightly_peer import InMemoryImages, lightly_transform, lr_factor
from benchmarks.lightly_peer import main as lightly_peer_main
from benchmarks.throughput import (
    AUGMENT,
    CEILING,
    LOADER,
    OURS_DATA,
    PEER,
    PEER_DATA,
    PLAIN,
    RAY_2,
    PerImageViews,
    Setup,
    peer_transform,
    target_checks,
)
from benchmarks.view_ablation import ARMS, EXPERIMENT, arm_views
from benchmarks.view_ablation import main as view_ablation_main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.methods import build_method
from pipeline.models import EncoderSpec
from pipeline.optim import build_optimizer
from pipeline.sections import AugmentConfig
from pipeline.track import Tracker
from pipeline.train import steps_in, train_step
from tests.helpers import copied_store


class FakeLoader:
    """``len`` of 10 batches in even epochs, 9 in odd ones."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 10 - self.epoch % 2


def test_max_steps_per_epoch_caps_the_plan_and_must_be_positive():
    assert load_config(None).train.max_steps_per_epoch is None
    assert steps_in(FakeLoader(), 3) == [10, 9, 10]
    cap = load_config(None, ["train.max_steps_per_epoch=9"]).train.max_steps_per_epoch
    assert steps_in(FakeLoader(), 3, cap) == [9, 9, 9]
    with pytest.raises(ConfigError, match=re.escape("train.max_steps_per_epoch must be > 0, got 0")):
        load_config(None, ["train.max_steps_per_epoch=0"])


def test_train_step_updates_the_weights_and_returns_the_loss():
    config = load_config(None, ["model.width=4", "model.embed_dim=8", "model.head_hidden=8", "model.head_dim=4"])
    spec = EncoderSpec("small_cnn", 1, 8, (0.5,), (0.25,), width=4, embed_dim=8)
    method = build_method(config.method, spec, config.model).to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in method.parameters()]
    loss = train_step(method, build_optimizer(method, config.optim, 4), [torch.rand(4, 1, 8, 8)] * 2, autocast=False)
    assert loss.shape == () and not loss.requires_grad and loss.item() > 0  # read by the loop when it chooses
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters(), strict=True))


def test_interleaved_alternates_variants_and_drops_warmup():
    calls = []
    rates = interleaved({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert rates == {"a": [1.0, 1.0], "b": [2.0, 2.0]}


def test_rss_summary_reads_after_warmup_end_peak_and_growth():
    samples = [
        m * MIB
        for m in (100, 100, 500, 300, 300, 310, 300, 320, 330, 340, 400, 350, 360, 370, 380, 390, 395, 395, 400, 100)
    ]  # a dip at the very end: workers gone
    assert rss_summary(samples) == {"after_warmup": 310, "end": 400, "peak": 500, "growth": 90}
    assert rss_summary(samples, warmup_fraction=0.5)["after_warmup"] == 400
    assert rss_summary([MIB]) == {"after_warmup": 1, "end": 1, "peak": 1, "growth": 0}


def test_sampler_follows_live_processes_and_skips_gone_ones():
    me = psutil.Process()
    gone = psutil.Popen(["true"])
    gone.wait()
    with RssSampler(lambda: {"me": me, "gone": gone}, interval=0.02) as sampler:
        deadline = time.monotonic() + 10  # a sample of a process with many children (a Ray session's) is slow
        while len(sampler.series.get("me", [])) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert set(sampler.series) == {"me"} and len(sampler.series["me"]) >= 3
    assert footprint(me) > 0 and footprint(gone) == 0


def test_peer_views_are_independent_float_views_of_one_image():
    spec = EncoderSpec("small_cnn", 1, 28, (0.5,), (0.25,))
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    views = PerImageViews(images, peer_transform("simclr", spec), num_views=2)[1]
    assert [v.shape for v in views] == [(1, 28, 28)] * 2 and views[0].dtype == torch.float32
    assert views[0].min() >= 0 and views[0].max() <= 1 and not torch.equal(views[0], views[1])
    assert torch.allclose(PerImageViews(images, peer_transform("none", spec), 1)[0][0], images[0] / 255)
    with pytest.raises(ConfigError, match="the peer mirrors the presets"):
        peer_transform("byol", spec)


def test_target_checks_hold_or_miss_each_target():
    rates = {
        CEILING: 1000,
        PLAIN: 950,
        PEER: 600,
        RAY_2: 880,
        LOADER: 30_000,
        AUGMENT: 40_000,
        OURS_DATA: 24_000,
        PEER_DATA: 4_000,
    }
    rss = {PLAIN: {"process": {"after_warmup": 1000, "end": 1100, "peak": 2100, "growth": 100}}}
    checks = {c["target"]: (round(c["value"], 3), c["held"]) for c in target_checks(rates, rss, "30 steps")}
    assert checks == {
        "ours, plain / ceiling >= 0.9": (0.95, "yes"),
        "ours, plain / peer >= 2": (1.583, "NO"),
        "ours, Ray 2x1 CPU / ceiling >= 0.9": (0.88, "NO"),
        "ours, Ray 2x1 CPU / peer >= 2": (1.467, "NO"),
        "ours, Ray 2x1 CPU / ours, plain >= 0.95": (0.926, "NO"),
        "ours, data path alone / peer, data path alone >= 2": (6.0, "yes"),
        "loader alone / fastest ours >= 20": (31.579, "yes"),
        "ours, plain, process: peak MiB < 2048": (2100, "NO"),
        "ours, plain, process: growth after warm-up < 0.05": (0.1, "NO"),
    }


def test_lightly_peer_views_and_schedule():
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    views, label = InMemoryImages(images, np.array([3, 4]), lightly_transform(28, 1))[1]
    assert label == 4 and [v.shape for v in views] == [(1, 28, 28)] * 2 and not torch.equal(*views)
    assert all(v.dtype == torch.float32 and v.min() >= 0 and v.max() <= 1 for v in views)  # no normalisation
    with pytest.raises(ConfigError, match="small grayscale"):
        lightly_transform(28, 3)
    whole = lightly_transform(28, 1, AugmentConfig(crop_min_scale=1.0, jitter_strength=0.0))  # the job's strengths
    image = torch.from_numpy(images[1]).float().div(255).unsqueeze(0)
    for view in InMemoryImages(images, np.array([3, 4]), whole)[1][0]:
        assert min((view - image).abs().max(), (view - image.flip(-1)).abs().max()) < 1e-6  # only flipped, if at all
    assert [lr_factor(s, 100, 0.1) for s in (0, 10, 55, 100, 130)] == pytest.approx([1e-4, 1, 0.5, 0, 0], abs=1e-3)


@pytest.mark.slow
def test_lightly_peer_trains_both_sides_from_the_same_weights(synthetic_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("benchmarks.common.RESULTS", tmp_path)
    args = [
        "--shards",
        str(synthetic_shards),
        "--minutes",
        "0.03",
        "0.05",
        "--seeds",
        "1",
        "--slice-seconds",
        "1",
        "--probe-max-iter",
        "20",
        "train.amp=true",  # both sides in bf16 autocast, whatever this CPU has
    ]
    (run,) = lightly_peer_main(args)["runs"]
    assert run["initial_weights_equal"] and run["first"] == "lightly"  # odd seeds start with lightly
    assert run["precision"] == "bf16 autocast"
    for side in ("ours", "lightly"):
        early, late = run["sides"][side]
        assert early["images"] > 0 and early["trained_min"] >= 0.03 and late["trained_min"] >= 0.05
        assert 0 < early["distance_from_initial"] <= late["distance_from_initial"]
        # the gratings are separable: the probe reads them far above chance (0.1) on either side
        assert late["images_per_s"] > 0 and late["probe_accuracy"] > 0.5
    written = json.loads((tmp_path / "lightly_peer-train.amp=true.json").read_text())
    assert written["command"] == "python -m benchmarks.lightly_peer " + " ".join(args) and written["machine"]["date"]
    assert "ours - lightly, points" in capsys.readouterr().out


def test_view_ablation_arms_make_two_independent_views_in_the_unit_range():
    spec = EncoderSpec("small_cnn", 1, 28, (0.5,), (0.25,))
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    # flat images whose brightness ranges x[0.6, 1.4] do not overlap: a view must stay with its own image
    levels = torch.tensor([10.0, 30.0, 80.0, 200.0])
    flat = levels.view(4, 1, 1, 1).expand(4, 1, 28, 28).to(torch.uint8)
    for arm in ARMS:
        views = arm_views(arm, Setup(load_config(None), spec, images), seed=0)(images)
        assert [v.shape for v in views] == [(4, 1, 28, 28)] * 2 and views[0].dtype == torch.float32, arm
        assert not torch.equal(*views), arm
        for view in arm_views(arm, Setup(load_config(None), spec, flat), seed=0)(flat):
            low, high = view.amin((1, 2, 3)) * 255, view.amax((1, 2, 3)) * 255
            assert (low >= 0.6 * levels - 1).all() and (high <= (1.4 * levels).clamp(max=255) + 1).all(), arm
    with pytest.raises(SystemExit, match="unknown arm 'blur'"):
        arm_views("blur", Setup(load_config(None), spec, images), seed=0)


@pytest.mark.slow
def test_view_ablation_starts_every_arm_alike_and_records_each_in_mlflow(
    synthetic_shards, tmp_path, tracking_uri, monkeypatch
):
    monkeypatch.setattr("benchmarks.common.RESULTS", tmp_path)
    uri = tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    base = ["--shards", str(synthetic_shards), "--seeds", "2", "--probe-max-iter", "20"]
    untrained = view_ablation_main([*base, "--steps", "0", "--arms", "ours", "lightly"])["runs"]
    assert untrained[0]["probe_accuracy"] == untrained[1]["probe_accuracy"]  # same initial weights
    trained = view_ablation_main([*base, "--steps", "3", "--arms", "ours", "tv-crop"])["runs"]
    tracker = Tracker(uri)
    runs = tracker.client.search_runs([tracker.experiment_id(EXPERIMENT)])
    logged = {(r.data.params["arm"], r.data.params["steps"]): r.data.metrics["probe_accuracy"] for r in runs}
    assert logged == {(r["arm"], str(r["steps"])): r["probe_accuracy"] for r in untrained + trained}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert json.loads((tmp_path / "view_ablation.json").read_text())["runs"] == trained


def test_a_runs_record_is_read_from_its_mlflow_run(tmp_path, monkeypatch, migrated_store):
    """``benchmarks.run_record`` writes what the MLflow run holds: its final metrics, params, times and command."""
    from mlflow import MlflowClient

    from benchmarks.run_record import main as run_record

    monkeypatch.setattr("benchmarks.common.RESULTS", tmp_path)
    uri = copied_store(migrated_store, tmp_path)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x"), run_name="mae-evidence")
    client.log_param(run.info.run_id, "method.name", "mae")
    for step, value in enumerate((0.7, 0.81)):
        client.log_metric(run.info.run_id, "probe_accuracy", value, step=step)
    client.set_terminated(run.info.run_id)
    run_record(["mae_fashion_mnist", "--run-id", run.info.run_id, "--tracking-uri", uri, "--command", "sslpipe x"])
    record = json.loads((tmp_path / "mae_fashion_mnist.json").read_text())
    assert record["metrics"] == {"probe_accuracy": 0.81} and record["params"] == {"method.name": "mae"}
    assert record["command"] == "sslpipe x" and record["run"]["name"] == "mae-evidence" and record["ended"]
