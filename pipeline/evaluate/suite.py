"""The evaluation a pretraining run ends with: probe and kNN of the encoder, the baselines beside them, and
reconstruction against PCA for methods that reconstruct."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from augment import save_view_grid
from pipeline.config import JobConfig
from pipeline.data.manifest import Manifest
from pipeline.evaluate.features import extract_features
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.plots import confusion_png
from pipeline.evaluate.probe import linear_probe
from pipeline.evaluate.reconstruction import pca_reconstruction_mse, reconstruction_metrics
from pipeline.methods import Method
from pipeline.models import build_encoder


def evaluate_method(
    method: Method, config: JobConfig, manifest: Manifest, out_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """``(metrics, PNG paths)``: ``probe_accuracy``, ``knn_accuracy`` and, with ``eval.baselines``,
    ``baseline_pixels_probe_accuracy`` and ``baseline_random_encoder_probe_accuracy``; for methods that
    reconstruct, ``recon_mse`` beside ``pca_recon_mse`` (PCA with the same k, fitted on train) and their ratio,
    the VAE's ``elbo``, ``kl`` and ``active_units``, and a grid of reconstructions."""
    encoder, spec = method.encoder, method.spec
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    options = dict(batch_size=config.eval.batch_size, device=device, url_template=config.data.url_template)

    def features(model: nn.Module | None):
        train = extract_features(model, config.data.shards, "train", **options)
        test = extract_features(model, config.data.shards, "test", **options)
        return train, test

    (train_x, train_y), (test_x, test_y) = features(encoder)
    probe = linear_probe(train_x, train_y, test_x, test_y, config.eval.probe_max_iter)
    metrics = {
        "probe_accuracy": probe.accuracy,
        "knn_accuracy": knn_accuracy(train_x, train_y, test_x, test_y, config.eval.knn_k, config.eval.knn_temperature),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [confusion_png(probe.confusion, list(manifest.class_names), out_dir / "probe_confusion.png",
                           f"linear probe, test accuracy {probe.accuracy:.4f}")]
    reconstructs = hasattr(method, "reconstruct")
    if config.eval.baselines or reconstructs:
        (pixels_train, pixels_train_y), (pixels_test, pixels_test_y) = features(None)
    if config.eval.baselines:
        metrics["baseline_pixels_probe_accuracy"] = linear_probe(
            pixels_train, pixels_train_y, pixels_test, pixels_test_y, config.eval.probe_max_iter
        ).accuracy
        torch.manual_seed(config.train.seed)
        (train_x, train_y), (test_x, test_y) = features(build_encoder(spec)[0])
        metrics["baseline_random_encoder_probe_accuracy"] = linear_probe(
            train_x, train_y, test_x, test_y, config.eval.probe_max_iter
        ).accuracy
    if reconstructs:
        recon, originals, reconstructions = reconstruction_metrics(
            method, config.data.shards, config.eval.batch_size, device, config.data.url_template
        )
        recon["pca_recon_mse"] = pca_reconstruction_mse(pixels_train, pixels_test, spec.bottleneck)
        recon["recon_mse_over_pca"] = recon["recon_mse"] / recon["pca_recon_mse"]
        metrics |= recon
        plots.append(save_view_grid(originals, [reconstructions], out_dir / "reconstructions.png"))
    return metrics, plots
