"""The evaluation a pretraining run ends with: probe and kNN of the encoder, the baselines beside them, and
reconstruction (and anomaly detection) against PCA for methods that reconstruct.

The features come from the Ray Train workers (:func:`worker_features`, run after the last epoch on every rank,
each reading its share of the evaluation shards once for the encoder, the random encoder and the pixels); the
driver gathers them and runs the probes and kNN side by side (:mod:`pipeline.evaluate.side_by_side`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from augment import save_image_grid
from pipeline.config import JobConfig
from pipeline.data import storage
from pipeline.data.manifest import Manifest, read_manifest
from pipeline.evaluate.features import ENCODER, PIXELS, RANDOM_ENCODER, SplitFeatures, WorkerFeatures, extract_features
from pipeline.evaluate.generation import interpolations, prior_samples
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.pixels import PixelPlan, pixel_plan, subsample
from pipeline.evaluate.plots import confusion_png, latent_scatter_png, roc_png
from pipeline.evaluate.probe import QUIET, linear_probe
from pipeline.evaluate.anomaly import (KNN, MAHALANOBIS, NEGATIVE_ELBO, PCA_RESIDUAL, RECONSTRUCTION, anomalous_labels,
                                       auroc, knn_cosine_scores, mahalanobis_scores)
from pipeline.evaluate.reconstruction import pca_reconstruction_errors, reconstruct_split
from pipeline.evaluate.side_by_side import side_by_side
from pipeline.methods import METHODS, Method
from pipeline.methods.base import ReconstructionMethod
from pipeline.methods.capabilities import Generative, Reconstructs
from pipeline.train.progress import duration

EVALUATION_FOLDER = "evaluation"  # in the run's folder beside its checkpoints: the ranks' features, then gone


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """Print ``evaluation: what`` and, when it ends, how long it took (evaluation can run for minutes)."""
    started = time.perf_counter()
    print(f"evaluation: {what} ...", flush=True)
    yield
    print(f"evaluation: {what} done in {duration(time.perf_counter() - started)}", flush=True)


def evaluation_manifest(config: JobConfig, manifest: Manifest) -> Manifest:
    """The manifest of the shards evaluation reads (``eval.shards``, else the training shards' ``manifest``)."""
    return read_manifest(config.eval.shards) if config.eval.shards else manifest


def baseline_plan(config: JobConfig, manifest: Manifest) -> PixelPlan:
    """What the raw-pixel baseline reads (see :mod:`pipeline.evaluate.pixels`)."""
    return pixel_plan(evaluation_manifest(config, manifest), config.eval.pixels_max_gb, config.data.crop_size)


def baseline_params(config: JobConfig, manifest: Manifest) -> dict[str, Any]:
    """The run's params about its baselines: the pixels' side and how many images of each split they probe."""
    return baseline_plan(config, manifest).params() if config.eval.baselines else {}


def features_folder(config: JobConfig) -> str:
    """Where the ranks write their features: ``evaluation/`` in the run's folder (``config`` with its run name)."""
    return storage.join(storage.join(config.train.storage_path, config.train.name), EVALUATION_FOLDER)


def worker_features(config: JobConfig, manifest: Manifest, folder: str = "") -> WorkerFeatures:
    """What every Ray Train rank computes for evaluation after the last epoch, writing into ``folder``
    (:func:`features_folder`): the encoder's features and, for the baselines or PCA (reconstruction, anomaly
    protocols), the random encoder's and the pixels."""
    reconstructs = issubclass(METHODS[config.method.name], ReconstructionMethod)
    anomaly = bool(config.data.exclude_classes(len(evaluation_manifest(config, manifest).class_names)))
    return WorkerFeatures(
        config.evaluation_shards, config.eval.batch_size, config.data.num_workers, config.data.url_template,
        config.data.skip_bad_samples, config.data.crop_size,
        random_seed=config.train.seed if config.eval.baselines else None,
        pixels=config.eval.baselines or reconstructs or anomaly, pixel_side=baseline_plan(config, manifest).side,
        folder=folder,
    )


def gather_features(extraction: WorkerFeatures) -> dict[str, SplitFeatures]:
    """The features the Ray Train workers wrote, in sample order (their files removed)."""
    with phase(f"gathering the features of {extraction.location} from the Ray Train workers"):
        features, seconds = extraction.gather()
    print(f"evaluation: the workers' feature pass took {duration(seconds)} (the slowest rank)", flush=True)
    return features


def _pixels(split: SplitFeatures, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (n, D) float32 in [0, 1], labels (n,))`` of ``samples`` rows of ``split`` (all, or seeded)."""
    rows = subsample(len(split.labels), samples, seed)
    return split.features[PIXELS][rows].astype(np.float32) / 255, split.labels[rows]


def evaluate_method(
    method: Method, config: JobConfig, manifest: Manifest, out_dir: Path,
    features: dict[str, SplitFeatures] | None = None,
) -> tuple[dict[str, float], list[Path]]:
    """``(metrics, PNG paths)``: ``probe_accuracy``, ``knn_accuracy`` and, with ``eval.baselines``,
    ``baseline_pixels_probe_accuracy`` and ``baseline_random_encoder_probe_accuracy``; a confusion matrix and a
    2-D scatter of the test codes. For methods that reconstruct: ``recon_mse`` beside ``pca_recon_mse`` (PCA with
    the same k, fitted on the pretraining images) and their ratio, a reconstruction grid and interpolation strips.
    For the VAE also ``elbo``, ``kl``, ``active_units`` and samples of the prior. With an anomaly protocol
    (``data.holdout_class`` or ``data.normal_class``): ``anomaly_auroc_<score>`` of the labels pretraining left out
    against the rest for each score the method supports (``knn`` and ``mahalanobis`` in the encoder's embedding of
    the training images it saw; ``recon`` error; the VAE's ``neg_elbo``) beside ``pca_anomaly_auroc`` (PCA's
    residual, at the bottleneck's k or ``eval.anomaly_pca_k``), and their ROC curves.
    ``features`` are what :func:`worker_features` gathered; without them this process extracts them."""
    spec = method.spec
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    location = config.evaluation_shards
    evaluation = evaluation_manifest(config, manifest)
    classes = list(evaluation.class_names)
    plan = baseline_plan(config, manifest)
    if features is None:
        extraction = worker_features(config, manifest)
        with phase(f"features of {location} in this process"):
            shares = extraction.shares(method, device, 0, 1)
            features = {split: share.in_sample_order() for split, share in shares.items()}
    train, test = features["train"], features["test"]
    train_x, test_x = train.features[ENCODER], test.features[ENCODER]
    max_iter, seed = config.eval.probe_max_iter, config.train.seed

    def probe(kind: str, train_pixels=None, test_pixels=None):
        if kind == PIXELS:
            return linear_probe(*train_pixels, *test_pixels, max_iter, device=device)
        return linear_probe(train.features[kind], train.labels, test.features[kind], test.labels, max_iter,
                            device=device)

    jobs = {"probe": lambda: probe(ENCODER)}
    sizes = {"probe": train_x.size}  # a probe's cost grows with its training features
    if config.eval.baselines:
        pixels_train = _pixels(train, plan.samples["train"], seed)
        pixels_test = _pixels(test, plan.samples["test"], seed)
        jobs |= {"pixels": lambda: probe(PIXELS, pixels_train, pixels_test), "random": lambda: probe(RANDOM_ENCODER)}
        sizes |= {"pixels": pixels_train[0].size, "random": train.features[RANDOM_ENCODER].size}
    jobs = {name: jobs[name] for name in sorted(jobs, key=sizes.get, reverse=True)}  # threads take the longest first
    jobs["knn"] = lambda: knn_accuracy(train_x, train.labels, test_x, test.labels, config.eval.knn_k,
                                       config.eval.knn_temperature, device=device)
    what = "linear probe and kNN" + (", baselines (raw pixels, random encoder)" if config.eval.baselines else "")
    with phase(f"{what} on {len(train_x):,} + {len(test_x):,} images, side by side"):
        results = side_by_side(jobs, quiet=QUIET)
    probe_result = results["probe"]
    metrics = {"probe_accuracy": probe_result.accuracy, "knn_accuracy": results["knn"]}
    if probe_result.weight_decay is not None:
        metrics["probe_weight_decay"] = probe_result.weight_decay
    if config.eval.baselines:
        metrics["baseline_pixels_probe_accuracy"] = results["pixels"].accuracy
        metrics["baseline_random_encoder_probe_accuracy"] = results["random"].accuracy
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        confusion_png(probe_result.confusion, classes, out_dir / "probe_confusion.png",
                      f"linear probe, test accuracy {probe_result.accuracy:.4f}"),
        latent_scatter_png(test_x, test.labels, classes, out_dir / "latent_scatter.png",
                           f"{config.method.name}: test codes ({test_x.shape[1]}-d)"),
    ]
    reconstructs = isinstance(method, Reconstructs)
    excluded = config.data.exclude_classes(len(classes))
    pixels = _pca_pixels(config, plan, train, test) if reconstructs or excluded else None
    seen = None if pixels is None else ~np.isin(pixels[1], excluded)  # PCA fits what the method trained on
    if reconstructs:
        with phase("reconstructions of the test split"):
            result = reconstruct_split(method, location, config.eval.batch_size, device, config.data.url_template,
                                       config.data.skip_bad_samples, config.data.crop_size)
        pca_errors = pca_reconstruction_errors(pixels[0][seen], pixels[2], spec.bottleneck)
        metrics |= result.metrics | {"pca_recon_mse": float(pca_errors.mean())}
        metrics["recon_mse_over_pca"] = metrics["recon_mse"] / metrics["pca_recon_mse"]
        originals = result.originals
        plots.append(save_image_grid([originals, result.reconstructions], out_dir / "reconstructions.png"))
        strips = interpolations(method, originals[0::2], originals[1::2], steps=10)
        plots.append(save_image_grid(strips, out_dir / "interpolations.png"))
        if isinstance(method, Generative):
            samples = prior_samples(method, 64, seed=config.train.seed)
            plots.append(save_image_grid(list(samples.split(8)), out_dir / "prior_samples.png"))
    if excluded:
        normal = ~np.isin(train.labels, excluded)
        with phase(f"anomaly scores of {len(test_x):,} test images against {int(normal.sum()):,} training images"):
            scores = {KNN: (knn_cosine_scores(train_x[normal], test_x, config.eval.anomaly_knn_k, device),
                            test.labels),
                      MAHALANOBIS: (mahalanobis_scores(train_x[normal], test_x), test.labels)}
            if reconstructs:
                scores[RECONSTRUCTION] = (result.errors, result.labels)
                if result.negative_elbo is not None:
                    scores[NEGATIVE_ELBO] = (result.negative_elbo, result.labels)
            pca_k = spec.bottleneck if reconstructs else config.eval.anomaly_pca_k
            scores[PCA_RESIDUAL] = (pca_errors if reconstructs else
                                    pca_reconstruction_errors(pixels[0][seen], pixels[2], pca_k), pixels[3])
        curves = {name: (score, anomalous_labels(labels, excluded)) for name, (score, labels) in scores.items()}
        metrics |= anomaly_metrics(curves)
        what = (f"class {config.data.normal_class} normal" if config.data.normal_class is not None
                else f"class {config.data.holdout_class} held out")
        plots.append(roc_png(curves, out_dir / "anomaly_roc.png", f"{config.method.name}, {what}: anomaly ROC"))
    return metrics, plots


def anomaly_metrics(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """``anomaly_auroc_<score>`` for each ``(scores (N,), anomalous (N,))`` of ``curves``; PCA's residual as
    ``pca_anomaly_auroc``."""
    return {("pca_anomaly_auroc" if name == PCA_RESIDUAL else f"anomaly_auroc_{name}"): auroc(*curve)
            for name, curve in curves.items()}


def _pca_pixels(
    config: JobConfig, plan: PixelPlan, train: SplitFeatures, test: SplitFeatures
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train pixels (N, D), labels (N,), test pixels (M, D), labels (M,))`` in [0, 1] for PCA: the workers'
    when the baseline kept the images' own size and every image, else read whole here (does not scale)."""
    if plan.side == plan.native_side:
        seed = config.train.seed
        return *_pixels(train, len(train.labels), seed), *_pixels(test, len(test.labels), seed)
    options = {"batch_size": config.eval.batch_size, "url_template": config.data.url_template,
               "skip_bad_samples": config.data.skip_bad_samples, "image_size": config.data.crop_size}
    return (*extract_features(None, config.evaluation_shards, "train", **options),
            *extract_features(None, config.evaluation_shards, "test", **options))
