"""The evaluation a pretraining run ends with: probe and kNN of the encoder, the baselines beside them, and
reconstruction (and anomaly detection) against PCA for methods that reconstruct."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from augment import save_image_grid
from pipeline.config import JobConfig
from pipeline.data.manifest import Manifest, read_manifest
from pipeline.evaluate.features import extract_features
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.generation import interpolations, prior_samples
from pipeline.evaluate.plots import confusion_png, latent_scatter_png
from pipeline.evaluate.probe import linear_probe
from pipeline.evaluate.reconstruction import anomaly_auroc, pca_reconstruction_errors, reconstruct_split
from pipeline.methods import Method
from pipeline.methods.capabilities import Generative, Reconstructs
from pipeline.models import build_encoder
from pipeline.train.progress import duration


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """Print ``evaluation: what`` and, when it ends, how long it took (evaluation can run for minutes)."""
    started = time.perf_counter()
    print(f"evaluation: {what} ...", flush=True)
    yield
    print(f"evaluation: {what} done in {duration(time.perf_counter() - started)}", flush=True)


def evaluate_method(
    method: Method, config: JobConfig, manifest: Manifest, out_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """``(metrics, PNG paths)``: ``probe_accuracy``, ``knn_accuracy`` and, with ``eval.baselines``,
    ``baseline_pixels_probe_accuracy`` and ``baseline_random_encoder_probe_accuracy``; a confusion matrix and a
    2-D scatter of the test codes. For methods that reconstruct: ``recon_mse`` beside ``pca_recon_mse`` (PCA with
    the same k, fitted on the pretraining images) and their ratio, a reconstruction grid and interpolation strips;
    with ``data.holdout_class``, ``anomaly_auroc`` of the reconstruction error for that class against the rest,
    beside ``pca_anomaly_auroc``. For the VAE also ``elbo``, ``kl``, ``active_units`` and samples of the prior."""
    encoder, spec = method.encoder, method.spec
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    options = dict(batch_size=config.eval.batch_size, device=device, url_template=config.data.url_template,
                   skip_bad_samples=config.data.skip_bad_samples, image_size=config.data.crop_size)
    location = config.evaluation_shards
    classes = list((read_manifest(location) if config.eval.shards else manifest).class_names)

    def features(model: nn.Module | None, what: str):
        with phase(f"features of {location} ({what})"):
            train = extract_features(model, location, "train", **options)
            test = extract_features(model, location, "test", **options)
        return train, test

    (train_x, train_y), (test_x, test_y) = features(encoder, "the encoder")
    with phase(f"linear probe and kNN on {len(train_x):,} + {len(test_x):,} images"):
        probe = linear_probe(train_x, train_y, test_x, test_y, config.eval.probe_max_iter)
        metrics = {
            "probe_accuracy": probe.accuracy,
            "knn_accuracy": knn_accuracy(train_x, train_y, test_x, test_y, config.eval.knn_k,
                                         config.eval.knn_temperature),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        confusion_png(probe.confusion, classes, out_dir / "probe_confusion.png",
                      f"linear probe, test accuracy {probe.accuracy:.4f}"),
        latent_scatter_png(test_x, test_y, classes, out_dir / "latent_scatter.png",
                           f"{config.method.name}: test codes ({test_x.shape[1]}-d)"),
    ]
    reconstructs = isinstance(method, Reconstructs)
    if config.eval.baselines or reconstructs:
        (pixels_train, pixels_train_y), (pixels_test, pixels_test_y) = features(None, "raw pixels")
    if config.eval.baselines:
        with phase("baseline: linear probe of raw pixels"):
            metrics["baseline_pixels_probe_accuracy"] = linear_probe(
                pixels_train, pixels_train_y, pixels_test, pixels_test_y, config.eval.probe_max_iter
            ).accuracy
        torch.manual_seed(config.train.seed)
        (train_x, train_y), (test_x, test_y) = features(build_encoder(spec)[0], "a randomly initialised encoder")
        with phase("baseline: linear probe of the random encoder"):
            metrics["baseline_random_encoder_probe_accuracy"] = linear_probe(
                train_x, train_y, test_x, test_y, config.eval.probe_max_iter
            ).accuracy
    if reconstructs:
        with phase("reconstructions of the test split"):
            result = reconstruct_split(method, location, config.eval.batch_size, device, config.data.url_template,
                                       config.data.skip_bad_samples, config.data.crop_size)
        seen = ~np.isin(pixels_train_y, config.data.exclude_classes)  # PCA fits what the method trained on
        pca_errors = pca_reconstruction_errors(pixels_train[seen], pixels_test, spec.bottleneck)
        metrics |= result.metrics | {"pca_recon_mse": float(pca_errors.mean())}
        metrics["recon_mse_over_pca"] = metrics["recon_mse"] / metrics["pca_recon_mse"]
        if config.data.holdout_class is not None:
            metrics["anomaly_auroc"] = anomaly_auroc(result.errors, result.labels, config.data.holdout_class)
            metrics["pca_anomaly_auroc"] = anomaly_auroc(pca_errors, pixels_test_y, config.data.holdout_class)
        originals = result.originals
        plots.append(save_image_grid([originals, result.reconstructions], out_dir / "reconstructions.png"))
        strips = interpolations(method, originals[0::2], originals[1::2], steps=10)
        plots.append(save_image_grid(strips, out_dir / "interpolations.png"))
        if isinstance(method, Generative):
            samples = prior_samples(method, 64, seed=config.train.seed)
            plots.append(save_image_grid(list(samples.split(8)), out_dir / "prior_samples.png"))
    return metrics, plots
