"""Evaluation's features on the ranks: shares that add up to the split, gathered in sample order, the raw-pixel
baseline's plan recorded in the run's params, and the same metrics however the features were computed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.data import LabeledShards, open_source, read_manifest, write_shards
from pipeline.errors import SslpipeError
from pipeline.evaluate.features import ENCODER, PIXELS, RANDOM_ENCODER, WorkerFeatures, extract_features
from pipeline.evaluate.pixels import pixel_plan, pixel_rows, subsample
from pipeline.evaluate.suite import evaluate_method, gathered_features, worker_features
from pipeline.job import evaluation_plan
from pipeline.methods import build_method
from pipeline.models import encoder_spec


def small_job(shards: Path, *overrides: str):
    config = load_config(
        None,
        [
            f"data.shards={shards}",
            "model.width=4",
            "model.embed_dim=16",
            "train.name=t",
            "eval.batch_size=256",
            "data.num_workers=0",
            "eval.probe_max_iter=100",
            "train.amp=false",  # float32 whatever this CPU has (the bf16 pass has its own test)
            *overrides,
        ],
    )
    manifest = read_manifest(shards)
    torch.manual_seed(1)  # not train.seed: the random-encoder baseline must differ from it
    method = build_method(config.method, encoder_spec(config.model, manifest, config.data.crop_size), config.model)
    return config, evaluation_plan(config, manifest), method


def run_ranks(extraction: WorkerFeatures, method, world_size: int):
    extraction.clear()
    for rank in range(world_size):  # each rank as a Ray Train worker runs it, here one after another
        extraction(method, torch.device("cpu"), rank, world_size)
    features = extraction.gather()[0]
    extraction.clear()  # as evaluation does when it is done; the memory maps stay readable
    return features


def test_two_ranks_gather_exactly_what_one_rank_computes(synthetic_shards, tmp_path):
    """3,000 train samples in uneven shards (700 x 4 + 200) and 500 test: two ranks (one reading with two loader
    processes, whose batches interleave) give the same rows, in the same order, with the same values."""
    _, plan, method = small_job(synthetic_shards)
    one = run_ranks(worker_features(plan, str(tmp_path / "one")), method, 1)
    two = run_ranks(worker_features(plan, str(tmp_path / "two")), method, 2)
    interleaved = worker_features(plan, str(tmp_path / "loaders"))
    interleaved = run_ranks(
        dataclasses.replace(interleaved, shards=dataclasses.replace(interleaved.shards, num_workers=2)), method, 2
    )
    for split, count in (("train", 3000), ("test", 500)):
        assert np.array_equal(one[split].indices, np.arange(count))  # every sample once, in sample order
        for other in (two, interleaved):
            assert np.array_equal(other[split].indices, one[split].indices)
            assert np.array_equal(other[split].labels, one[split].labels)
            assert set(other[split].features) == {ENCODER, RANDOM_ENCODER, PIXELS}
            for kind, values in one[split].features.items():
                np.testing.assert_array_equal(other[split].features[kind], values)
    assert one["train"].features[ENCODER].shape == (3000, 16) and one["train"].features[PIXELS].dtype == np.uint8
    assert not np.allclose(one["test"].features[ENCODER], one["test"].features[RANDOM_ENCODER])
    pixels, labels = extract_features(None, LabeledShards(str(synthetic_shards)), "test")  # the in-process reader
    np.testing.assert_array_equal(pixels, one["test"].features[PIXELS] / np.float32(255))
    np.testing.assert_array_equal(labels, one["test"].labels)
    assert not list((tmp_path / "two").iterdir())  # the ranks' files and the joined ones are removed
    assert isinstance(two["train"].features[ENCODER], np.memmap) and two["train"].features[ENCODER].dtype == np.float16


def test_the_feature_pass_runs_in_bf16_where_training_would(synthetic_shards, tmp_path, caplog):
    """``train.amp=true``: the encoders' features come from bf16 autocast (stored as float16), close to float32's
    but not equal to them; the rank's line names the precision."""
    _, plan, method = small_job(synthetic_shards, "train.amp=true")
    with caplog.at_level("INFO", logger="pipeline.evaluate.features"):
        bf16 = run_ranks(worker_features(plan, str(tmp_path / "bf16")), method, 1)
    fp32 = run_ranks(worker_features(dataclasses.replace(plan, amp=False), str(tmp_path / "fp32")), method, 1)
    assert "(bf16 autocast)" in caplog.text
    for split in ("train", "test"):
        for kind in (ENCODER, RANDOM_ENCODER):
            low, full = bf16[split].features[kind], fp32[split].features[kind]
            assert low.dtype == np.float16 and not np.array_equal(low, full)
            low, full = low.astype(np.float32), full.astype(np.float32)
            cosine = (low * full).sum(1) / (np.linalg.norm(low, axis=1) * np.linalg.norm(full, axis=1))
            assert cosine.min() > 0.99, cosine.min()
        np.testing.assert_array_equal(bf16[split].features[PIXELS], fp32[split].features[PIXELS])


def test_gather_refuses_a_rank_that_did_not_finish(synthetic_shards, tmp_path):
    _, plan, method = small_job(synthetic_shards, "eval.baselines=false")
    extraction = worker_features(plan, str(tmp_path))
    extraction(method, torch.device("cpu"), 1, 2)  # rank 0 never wrote its share
    with pytest.raises(SslpipeError, match=r"features of 1 of 2 ranks; the Ray Train workers did not finish"):
        extraction.gather()


def test_the_metrics_do_not_depend_on_where_the_features_were_computed(synthetic_shards, tmp_path):
    _, plan, method = small_job(synthetic_shards)
    here, _ = evaluate_method(method, plan, tmp_path / "here")
    extraction = worker_features(plan, str(tmp_path / "features"))
    extraction(method, torch.device("cpu"), 2, 3)  # what an earlier attempt on 3 ranks left
    extraction.clear()  # as pretrain does before it trains
    for rank in range(2):
        extraction(method, torch.device("cpu"), rank, 2)
    with gathered_features(extraction, tmp_path / "joined") as features:
        gathered, _ = evaluate_method(method, plan, tmp_path / "there", features)
    assert not list((tmp_path / "features").iterdir())
    assert set(here) == {
        "probe_accuracy",
        "knn_accuracy",
        "baseline_pixels_probe_accuracy",
        "baseline_random_encoder_probe_accuracy",
    }
    assert gathered == here


@pytest.fixture(scope="module")
def shards_64px(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("px64")
    write_shards(
        open_source("synthetic", num_train=600, num_test=200, image_size=64, channels=3),
        out,
        samples_per_shard=300,
        progress=False,
    )
    return out


def test_pixels_above_the_budget_are_downsampled_then_subsampled_and_the_params_say_so(shards_64px):
    manifest = read_manifest(shards_64px)
    assert pixel_plan(manifest, 1.0).whole  # 600 x 3 x 64 x 64 float32 = 29 MB: all of them, as they are
    budget_gb = 400 * 3 * 32 * 32 * 4 / (1 << 30)  # room for 400 images at 32 px
    plan = pixel_plan(manifest, budget_gb)
    assert (plan.side, plan.samples, plan.totals) == (32, {"train": 400, "test": 200}, {"train": 600, "test": 200})
    config = load_config(None, [f"data.shards={shards_64px}", f"eval.pixels_max_gb={budget_gb}"])
    params = evaluation_plan(config, manifest).params()
    assert (
        params["eval.baseline_pixels_side"],
        params["eval.baseline_pixels_samples"],
        params["eval.baseline_pixels_test_samples"],
    ) == (32, 400, 200)
    assert (
        "eval.baseline_pixels_side"
        not in evaluation_plan(
            load_config(None, [f"data.shards={shards_64px}", "eval.baselines=false"]), manifest
        ).params()
    )
    rows = subsample(600, 400, seed=0)
    assert len(set(rows)) == 400 and np.array_equal(rows, np.sort(rows)) and rows.max() < 600
    assert np.array_equal(rows, subsample(600, 400, seed=0)) and not np.array_equal(rows, subsample(600, 400, seed=1))
    assert np.array_equal(subsample(600, 900, seed=0), np.arange(600))


def test_downsampled_pixels_are_area_averages():
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    rows = pixel_rows(images, 32)
    expected = torch.nn.functional.avg_pool2d(images.float(), 2).round().to(torch.uint8).flatten(1)
    assert rows.shape == (2, 3 * 32 * 32) and torch.equal(rows, expected)
    assert torch.equal(pixel_rows(images, 64), images.flatten(1))
