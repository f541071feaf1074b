"""End to end on a real local Ray and a real MLflow store: pretrain -> probe -> MLflow -> export."""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import load_config, with_values
from pipeline.export import load_encoder
from pipeline.pretrain import pretrain
from pipeline.train import NonFiniteLoss

JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.fixture
def config(synthetic_shards, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # exports/, ray_results/ and mlflow.db land here
    return load_config(None, [
        f"data.shards={synthetic_shards}", "data.batch_size=64", "data.num_workers=1", "model.width=8", "model.embed_dim=32",
        "model.head_hidden=64", "model.head_dim=32", "train.epochs=1", "train.name=e2e", "eval.baselines=false",
        "eval.probe_max_iter=200",
    ])


@pytest.mark.slow
def test_pretrain_tracks_and_exports(ray_local, config, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    summary = pretrain(config)
    assert not list((tmp_path / "tmp").glob("sslpipe-*"))  # the run's own temporary folders are gone
    assert summary.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(summary.tracking_uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.temperature"] == "0.5" and run.data.params["train.epochs"] == "1"
    assert len(run.data.params["data.manifest_sha256"]) == 64
    assert 0.0 <= run.data.metrics["probe_accuracy"] <= 1.0 and "knn_accuracy" in run.data.metrics
    assert [m.step for m in client.get_metric_history(summary.run_id, "loss")] == [0]
    artifacts = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"augmentation_preview.png", "probe_confusion.png", "config.yaml", "export"} <= artifacts

    # the registered model loads without our classes and embeds; load_encoder gives the same embeddings
    assert summary.model_uri == "models:/sslpipe-encoder/1"
    mlflow.set_tracking_uri(summary.tracking_uri)
    registered = mlflow.pytorch.load_model(summary.model_uri)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = load_encoder(summary.export_dir).eval()(x)
        torch.testing.assert_close(registered(x), expected)
        torch.testing.assert_close(load_encoder(summary.model_uri).eval()(x), expected)
    assert expected.shape == (3, 32)


@pytest.mark.slow
def test_nan_loss_is_one_clear_line(ray_local, config, tmp_path):
    config.optim.lr = 1e30
    config.train.max_failures = 0
    config.train.name = "diverges"
    with pytest.raises(NonFiniteLoss, match=r"^Ray Train worker \d: loss is (nan|inf|-inf) at epoch 0, step \d+ \(rank \d\); lower optim.lr"):
        pretrain(config)
    runs = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "dim", "extra_metrics", "extra_plots"),
    [
        ({"method.name": "autoencoder", "augment.preset": "none", "method.bottleneck": 12, "method.sparsity": "kl",
          "method.corruption": "gaussian", "data.holdout_class": 3}, 12,
         {"recon_mse", "pca_recon_mse", "recon_mse_over_pca", "anomaly_auroc", "pca_anomaly_auroc"},
         {"reconstructions.png", "interpolations.png"}),
        ({"method.name": "vae", "augment.preset": "none", "method.bottleneck": 6, "method.kl_anneal_steps": 10}, 6,
         {"recon_mse", "pca_recon_mse", "elbo", "kl", "active_units", "train_kl", "train_active_units",
          "train_kl_dim_5"},
         {"reconstructions.png", "interpolations.png", "prior_samples.png"}),
    ],
    ids=["denoising-sparse-autoencoder-without-class-3", "vae"],  # BYOL: tests/test_reliability.py
)
def test_other_methods_run_end_to_end(ray_local, config, overrides, dim, extra_metrics, extra_plots):
    config = with_values(config, overrides, "test")
    config.train.name = config.method.name
    summary = pretrain(config)
    client = MlflowClient(summary.tracking_uri)
    metrics = client.get_run(summary.run_id).data.metrics
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["probe_accuracy"] <= 1.0
    assert extra_metrics <= metrics.keys()
    if "anomaly_auroc" in extra_metrics:
        assert 0.0 <= metrics["anomaly_auroc"] <= 1.0 and 0.0 <= metrics["pca_anomaly_auroc"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"latent_scatter.png", *extra_plots} <= artifacts
    assert load_encoder(summary.export_dir)(torch.rand(2, 1, 28, 28)).shape == (2, dim)


@pytest.mark.slow
def test_photos_pretrain_on_unlabeled_shards_and_evaluate_on_labeled_ones(
    ray_local, unlabeled_photo_shards, labeled_photo_shards, tmp_path, monkeypatch
):
    """The photo path end to end: JPEG shards decoded and cropped in the loader workers, a ResNet-18 with the
    ImageNet stem, the probe and kNN on a separate labeled set, the export at the crop size."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config(JOBS / "simclr_photos.yaml", [
        f"data.shards={unlabeled_photo_shards}", f"eval.shards={labeled_photo_shards}", "data.image_size=64",
        "data.batch_size=16", "train.epochs=1", "train.max_steps_per_epoch=2", "train.name=photos",
        "eval.baselines=false",
    ])
    summary = pretrain(config)
    client = MlflowClient(summary.tracking_uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.params["eval.shards"] == str(labeled_photo_shards)
    assert run.data.params["model.encoder"] == "resnet18" and run.data.params["data.image_size"] == "64"
    assert summary.train_metrics["images"] == 2 * 2 * 16  # 2 steps of 16 photos on each of 2 ranks
    per_rank = [summary.train_metrics[f"images_per_s_rank_{r}"] for r in range(2)]
    assert min(per_rank) > 0 and abs(sum(per_rank) / summary.train_metrics["images_per_s"] - 1) < 0.25
    assert 0.0 <= run.data.metrics["data_wait_fraction"] < 1.0 and "images_per_s_rank_1" in run.data.metrics
    # 8 photographs to tell apart from 64 px center crops of 256-640 px pieces: far above chance (0.125)
    assert run.data.metrics["probe_accuracy"] > 0.5 and run.data.metrics["knn_accuracy"] > 0.3
    artifacts = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"augmentation_preview.png", "probe_confusion.png", "export"} <= artifacts
    assert load_encoder(summary.export_dir)(torch.rand(2, 3, 64, 64)).shape == (2, 512)
