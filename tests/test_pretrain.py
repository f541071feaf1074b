"""End to end on a real MLflow store: pretrain -> probe -> MLflow -> export, on a real local Ray where ranks are under
test (the shared SimCLR run, the one-line worker error), else as one rank in this process (``train.num_workers=0``)."""

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.commands.pretrain import pretrain
from pipeline.config import load_config, with_values
from pipeline.evaluate.features import ENCODER, PIXELS, RANDOM_ENCODER
from pipeline.evaluate.suite import worker_features
from pipeline.export import load_encoder
from pipeline.track.tracker import fluent_api_at
from pipeline.train import NonFiniteLoss
from pipeline.train.amp import native_bf16, precision_name
from tests.helpers import TINY_MODEL, features_with_the_library_alone

JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.fixture
def config(synthetic_shards, workdir):
    return load_config(
        None,
        [
            f"data.shards={synthetic_shards}",
            "data.batch_size=64",
            "data.num_workers=1",
            *TINY_MODEL,
            "train.epochs=1",
            "train.name=e2e",
            "eval.baselines=false",
            "eval.probe_max_iter=200",
        ],
    )


@pytest.mark.slow
def test_pretrain_tracks_and_exports(shipped_simclr):
    """The shipped SimCLR job on 2 ranks through ``pretrain`` (the run the learning gate asserts on): the features
    the Ray Train workers computed after the last epoch, the MLflow run, its datasets and system metrics, the export
    and the registered model."""
    config, summary, evaluated = shipped_simclr.config, shipped_simclr.summary, shipped_simclr.evaluated
    # each rank wrote its share after the last epoch; gathered, they are what one process computes from the model
    # (in bf16, where this CPU has it: a rank's one thread and this process's two may round an activation
    # differently, by one bf16 step of 2^-8; in float32, two values a hair apart may round to neighbouring float16
    # values in storage, 2^-11 apart)
    shares = worker_features(evaluated["plan"]).shares(evaluated["method"], torch.device("cpu"), 0, 1)
    tolerance = 1e-2 if native_bf16(torch.device("cpu")) else 1e-3
    for split, share in shares.items():
        expected, gathered = share, evaluated["features"][split]
        assert isinstance(gathered.features[ENCODER], np.memmap) and gathered.features[ENCODER].dtype == np.float16
        assert np.array_equal(gathered.indices, expected.indices) and len(expected.indices) == 10_000
        assert set(expected.features) == {ENCODER, RANDOM_ENCODER, PIXELS}
        np.testing.assert_array_equal(gathered.features[PIXELS], expected.features[PIXELS])
        for kind in (ENCODER, RANDOM_ENCODER):  # each row within the tolerance of its norm
            values, want = gathered.features[kind].astype(np.float32), expected.features[kind].astype(np.float32)
            error = np.linalg.norm(values - want, axis=1)
            assert (error <= tolerance * np.linalg.norm(want, axis=1)).all(), (kind, error.max())
    assert not list(shipped_simclr.temp.glob("sslpipe-*"))  # the run's own temporary folders are gone
    assert summary.tracking_uri == f"sqlite:///{shipped_simclr.temp.parent / 'mlflow.db'}"
    client = MlflowClient(summary.tracking_uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.temperature"] == "0.1" and run.data.params["train.epochs"] == "2"  # job, gate
    assert len(run.data.params["data.manifest_sha256"]) == 64
    # train.amp auto: bf16 autocast where this CPU has bf16 instructions, on both ranks
    cpu_precision = precision_name(native_bf16(torch.device("cpu")))
    assert run.data.params["train.amp"] == "auto" and run.data.params["precision"] == cpu_precision
    assert [m.step for m in client.get_metric_history(summary.run_id, "loss")] == [0, 1]
    global_batch = config.data.batch_size * config.train.num_workers
    assert run.data.metrics["images"] == 10_000 // global_batch * global_batch  # each worker read its own share
    per_rank = [run.data.metrics[f"images_per_s_rank_{rank}"] for rank in range(2)]  # each rank's own rate
    assert min(per_rank) > 0 and abs(sum(per_rank) / run.data.metrics["images_per_s"] - 1) < 0.25
    artifacts = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"augmentation_preview.png", "probe_confusion.png", "config.yaml", "export"} <= artifacts

    # what the MLflow UI shows: the shards as the dataset input, the source, the training view, system metrics
    [used] = run.inputs.dataset_inputs
    assert json.loads(used.dataset.source) == {"uri": config.data.shards}
    assert used.dataset.digest == run.data.params["data.manifest_sha256"][:36]
    assert [(tag.key, tag.value) for tag in used.tags] == [("mlflow.data.context", "training")]
    assert run.data.tags["mlflow.source.name"] == "sslpipe pretrain" and run.data.tags["mlflow.source.type"] == "LOCAL"
    commit = subprocess.run(
        ["git", "-C", str(JOBS.parent), "rev-parse", "HEAD"], check=False, capture_output=True, text=True
    )
    assert run.data.tags.get("mlflow.source.git.commit") == (commit.stdout.strip() if commit.returncode == 0 else None)
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(client.get_metric_history(summary.run_id, "system/cpu_utilization_percentage")) >= 1
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0

    # the registered model loads without our classes, takes .eval() and .to(), and embeds; load_encoder agrees
    assert summary.model_uri == "models:/sslpipe-encoder/1"
    with fluent_api_at(summary.tracking_uri):  # as a user's MLFLOW_TRACKING_URI would
        registered = mlflow.pytorch.load_model(summary.model_uri).eval().to("cpu")
        requirements = Path(mlflow.pyfunc.get_model_dependencies(summary.model_uri)).read_text().split()
        from_registry = load_encoder(summary.model_uri).eval()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = load_encoder(summary.export_dir).eval()(x)
        torch.testing.assert_close(registered(x), expected)
        torch.testing.assert_close(from_registry(x), expected)
    assert expected.shape == (3, 16)  # the gate's 16-d representation


@pytest.mark.slow
def test_nan_loss_is_one_clear_line(ray_local, config, tmp_path):
    config.optim.lr = 1e30
    config.train.max_failures = 0
    config.train.num_workers = 1
    config.train.name = "diverges"
    with pytest.raises(
        NonFiniteLoss,
        match=r"^Ray Train worker \d: loss is (nan|inf|-inf) at epoch 0, step \d+ \(rank \d\); lower optim.lr",
    ):
        pretrain(config)
    runs = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
def test_a_denoising_sparse_autoencoder_without_a_class_runs_end_to_end(config):
    """The autoencoder's path through ``pretrain``, leaving class 3 out: its reconstruction and anomaly metrics and
    plots, and the export ending at the 12-d code. (The VAE's: tests/test_anomaly.py; BYOL's:
    tests/test_reliability.py.)"""
    overrides = {
        "method.name": "autoencoder",
        "augment.preset": "none",
        "method.bottleneck": 12,
        "method.sparsity": "kl",
        "method.corruption": "gaussian",
        "data.holdout_class": 3,
        "train.num_workers": 0,
        "train.name": "autoencoder",
    }
    summary = pretrain(with_values(config, overrides, "test"), register=False)
    client = MlflowClient(summary.tracking_uri)
    metrics = client.get_run(summary.run_id).data.metrics
    assert np.isfinite(metrics["loss"]) and metrics["probe_accuracy"] > 0.6  # chance: 0.1; measured 0.90
    assert {
        "recon_mse",
        "pca_recon_mse",
        "recon_mse_over_pca",
        "anomaly_auroc_recon",
        "anomaly_auroc_knn",
        "anomaly_auroc_mahalanobis",
        "pca_anomaly_auroc",
    } <= metrics.keys()
    artifacts = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"latent_scatter.png", "reconstructions.png", "interpolations.png", "anomaly_roc.png"} <= artifacts
    assert load_encoder(summary.export_dir)(torch.rand(2, 1, 28, 28)).shape == (2, 12)


@pytest.mark.slow
def test_photos_pretrain_through_the_command_on_unlabeled_shards_and_evaluate_on_labeled_ones(
    unlabeled_photo_shards, labeled_photo_shards, workdir, capsys
):
    """The photo path end to end through `sslpipe pretrain`: JPEG shards decoded and cropped in the loader
    workers, the photo job's ResNet-18 (ImageNet stem) as one rank in this process, the probe and kNN on a separate
    labeled set, the export at the crop size, with ONNX beside it and a backbone.safetensors that torchvision alone
    loads."""
    overrides = [
        f"data.shards={unlabeled_photo_shards}",
        f"eval.shards={labeled_photo_shards}",
        "data.image_size=64",
        "data.batch_size=16",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.num_workers=0",
        "train.name=photos",
        "eval.baselines=false",
        "export.onnx=true",
    ]
    assert main(["pretrain", str(JOBS / "simclr_photos.yaml"), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "probe_accuracy" in printed and "/#/experiments/1?workflowType=machine_learning" in printed
    assert f"precision: {precision_name(native_bf16(torch.device('cpu')))} (train.amp auto on cpu)" in printed
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = client.search_runs(["1"], "tags.`sslpipe.run_name` = 'photos'")
    assert run.info.status == "FINISHED" and run.data.params["eval.shards"] == str(labeled_photo_shards)
    assert run.data.params["model.encoder"] == "resnet18" and run.data.params["data.image_size"] == "64"
    assert {(used.tags[0].value, json.loads(used.dataset.source)["uri"]) for used in run.inputs.dataset_inputs} == {
        ("training", str(unlabeled_photo_shards)),
        ("evaluation", str(labeled_photo_shards)),
    }
    metrics = run.data.metrics
    assert metrics["images"] == 2 * 16  # 2 steps of 16 photos
    assert metrics["images_per_s"] > 0 and printed.count("epoch 1/1 done in") == 1  # its line, printed here
    assert 0.0 <= metrics["data_wait_fraction"] < 1.0
    # 8 photographs to tell apart from 64 px center crops of 256-640 px pieces: far above chance (0.125)
    assert metrics["probe_accuracy"] > 0.5 and metrics["knn_accuracy"] > 0.3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"augmentation_preview.png", "probe_confusion.png", "export"} <= artifacts
    export = workdir / "exports" / "photos"
    assert (export / "encoder.onnx").is_file()
    meta = json.loads((export / "encoder.json").read_text())
    assert meta["backbone"]["library"] == "torchvision" and meta["spec"]["arch"] == "torchvision:resnet18"
    encoder = load_encoder(export).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        assert encoder(x).shape == (4, 512)
        torch.testing.assert_close(features_with_the_library_alone((export, x))[0], encoder[1](encoder[0](x)))


@pytest.mark.slow
def test_a_timm_vit_pretrains_through_the_command_and_loads_in_timm_alone(
    unlabeled_photo_shards, labeled_photo_shards, workdir
):
    """A timm ViT-Tiny trained as a masked autoencoder (the MAE job) on photos at 32 px, a few capped steps through
    `sslpipe pretrain` in this process; the export's backbone.safetensors gives the encoder's features in timm
    alone: the ViT on whole images, its decoder left behind."""
    overrides = [
        f"data.shards={unlabeled_photo_shards}",
        f"eval.shards={labeled_photo_shards}",
        "data.image_size=32",
        "data.batch_size=8",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.num_workers=0",
        "eval.baselines=false",
        "model.encoder=timm:vit_tiny_patch16_224",
        "model.backbone_args={patch_size: 8}",
        "train.name=vit",
    ]
    assert main(["pretrain", str(JOBS / "mae_fashion_mnist.yaml"), *overrides]) == 0
    export = workdir / "exports" / "vit"
    meta = json.loads((export / "encoder.json").read_text())
    assert meta["method"] == "mae" and meta["backbone"]["library"] == "timm"
    assert meta["spec"]["arch"] == "timm:vit_tiny_patch16_224"
    assert meta["spec"]["backbone_args"].get("img_size") == 32  # ViTs take a size
    encoder = load_encoder(export).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = encoder[1](encoder[0](x))
    torch.testing.assert_close(features_with_the_library_alone((export, x))[0], expected)
