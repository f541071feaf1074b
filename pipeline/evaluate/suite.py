"""The evaluation a pretraining run ends with, as its :class:`~pipeline.evaluate.evaluation_plan.EvaluationPlan`
says: probe and kNN of the encoder, the baselines beside them, and reconstruction (and anomaly detection) against
PCA for methods that reconstruct.

The features come from the Ray Train workers (:func:`worker_features`, run after the last epoch on every rank,
each reading its share of the evaluation shards once for the encoder, the random encoder and the pixels); the
driver joins and memory-maps them (:mod:`pipeline.evaluate.feature_files`) and runs the probes and kNN, which read
them a chunk at a time (:mod:`pipeline.evaluate.rows`), side by side on CPUs and one after another on a GPU
(:mod:`pipeline.evaluate.side_by_side`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from augment import save_image_grid
from pipeline.console import duration, phase
from pipeline.evaluate.anomaly_scores import (
    KNN,
    MAHALANOBIS,
    NEGATIVE_ELBO,
    PCA_RESIDUAL,
    RECONSTRUCTION,
    anomalous_labels,
    auroc,
    knn_cosine_scores,
    mahalanobis_scores,
)
from pipeline.evaluate.evaluation_plan import EvaluationPlan
from pipeline.evaluate.features import ENCODER, PIXELS, RANDOM_ENCODER, SplitFeatures, WorkerFeatures, extract_features
from pipeline.evaluate.generation import interpolations, prior_samples
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.masked import masked_reconstructions
from pipeline.evaluate.online import OnlineKnn
from pipeline.evaluate.pixels import subsample
from pipeline.evaluate.plots import confusion_png, latent_scatter_png, roc_png
from pipeline.evaluate.probe import QUIET, ProbeResult, linear_probe
from pipeline.evaluate.reconstruction import Reconstructions, pca_reconstruction_errors, reconstruct_split
from pipeline.evaluate.side_by_side import side_by_side
from pipeline.methods import Method
from pipeline.methods.capabilities import Capability

Pixels = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train pixels, labels, test pixels, labels


def worker_features(plan: EvaluationPlan, folder: str = "") -> WorkerFeatures:
    """What every Ray Train rank computes for evaluation after the last epoch, writing into ``folder``: the
    encoder's features and, for the baselines or PCA (reconstruction, anomaly protocols), the random encoder's
    and the pixels."""
    return WorkerFeatures(
        plan.shards,
        random_seed=plan.seed if plan.baselines else None,
        pixels=plan.baselines or plan.reconstructs or plan.anomaly is not None,
        pixel_side=plan.pixels.side,
        amp=plan.amp,
        folder=folder,
    )


def monitors(plan: EvaluationPlan) -> tuple[OnlineKnn, ...]:
    """What rank 0 measures after every epoch: the online kNN when the plan asks for it."""
    return (OnlineKnn(plan.shards, plan.online_knn, plan.knn_k, plan.knn_temperature),) if plan.online_knn > 0 else ()


@contextlib.contextmanager
def gathered_features(extraction: WorkerFeatures, into: Path) -> Iterator[dict[str, SplitFeatures]]:
    """The features the Ray Train workers wrote, in sample order, memory-mapped from files joined in the features'
    folder when it is local, else in ``into``; all of them removed when the block exits."""
    with phase(f"evaluation: gathering the features of {extraction.shards.location} from the training ranks"):
        features, seconds = extraction.gather(into)
    print(f"evaluation: the ranks' feature pass took {duration(seconds)} (the slowest rank)", flush=True)
    try:
        yield features
    finally:
        extraction.clear(into)


def _pixels(split: SplitFeatures, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (n, D) float32 in [0, 1], labels (n,))`` of ``samples`` rows of ``split`` (all, or seeded)."""
    rows = subsample(len(split.labels), samples, seed)
    return split.features[PIXELS][rows].astype(np.float32) / 255, split.labels[rows]


def evaluate_method(
    method: Method, plan: EvaluationPlan, out_dir: Path, features: dict[str, SplitFeatures] | None = None
) -> tuple[dict[str, float], list[Path]]:
    """``(metrics, PNG paths)``: ``probe_accuracy``, ``knn_accuracy`` and, with baselines,
    ``baseline_pixels_probe_accuracy`` and ``baseline_random_encoder_probe_accuracy``; a confusion matrix and a
    2-D scatter of the test codes. For methods that reconstruct: ``recon_mse`` beside ``pca_recon_mse`` (PCA with
    the same k, fitted on the pretraining images) and their ratio, a reconstruction grid and interpolation strips;
    for generative ones also ``elbo``, ``kl``, ``active_units`` and samples of the prior. For masked-image models
    (MAE): ``masked_recon_mse`` and a grid of masked inputs, reconstructions and originals. With an anomaly protocol:
    ``anomaly_auroc_<score>`` of the labels pretraining left out against the rest for each score the method
    supports (``knn`` and ``mahalanobis`` in the encoder's embedding of the training images it saw; ``recon``
    error; the VAE's ``neg_elbo``) beside ``pca_anomaly_auroc`` (PCA's residual), and their ROC curves.
    ``features`` are what :func:`worker_features` gathered; without them this process extracts them."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if features is None:
        with phase(f"evaluation: features of {plan.shards.location} in this process"):
            shares = worker_features(plan).shares(method, device, 0, 1)
            features = {split: share.in_sample_order() for split, share in shares.items()}
    train, test = features["train"], features["test"]
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, probe = _probes(plan, train, test, device)
    test_x, classes = test.features[ENCODER], list(plan.class_names)
    plots = [
        confusion_png(
            probe.confusion,
            classes,
            out_dir / "probe_confusion.png",
            f"linear probe, test accuracy {probe.accuracy:.4f}",
        ),
        latent_scatter_png(
            test_x,
            test.labels,
            classes,
            out_dir / "latent_scatter.png",
            f"{plan.method}: test codes ({test_x.shape[1]}-d)",
        ),
    ]
    if Capability.MASKED in plan.capabilities:
        with phase("evaluation: masked reconstructions of the test split"):
            masked_metrics, rows = masked_reconstructions(method, plan.shards, device)
        metrics |= masked_metrics
        plots.append(save_image_grid(rows, out_dir / "masked_reconstructions.png"))
    pixels = _pca_pixels(plan, train, test) if plan.reconstructs or plan.anomaly else None
    reconstructed = None
    if plan.reconstructs:
        reconstructed, recon_metrics, recon_plots = _reconstruction(method, plan, pixels, device, out_dir)
        metrics |= recon_metrics
        plots += recon_plots
    if plan.anomaly:
        curves = _anomaly_curves(plan, train, test, pixels, reconstructed, device)
        metrics |= anomaly_metrics(curves)
        plots.append(
            roc_png(curves, out_dir / "anomaly_roc.png", f"{plan.method}, {plan.anomaly.protocol}: anomaly ROC")
        )
    return metrics, plots


def _probes(
    plan: EvaluationPlan, train: SplitFeatures, test: SplitFeatures, device: torch.device
) -> tuple[dict[str, float], ProbeResult]:
    """The probe and kNN of the encoder (and the baselines' probes) side by side; ``(metrics, the probe)``."""
    train_x, test_x = train.features[ENCODER], test.features[ENCODER]

    def probe(kind: str, train_pixels=None, test_pixels=None) -> ProbeResult:
        if kind == PIXELS:
            return linear_probe(*train_pixels, *test_pixels, plan.probe_max_iter, device=device)
        return linear_probe(
            train.features[kind], train.labels, test.features[kind], test.labels, plan.probe_max_iter, device=device
        )

    jobs = {"probe": lambda: probe(ENCODER)}
    sizes = {"probe": train_x.size}  # a probe's cost grows with its training features
    if plan.baselines:
        pixels_train = _pixels(train, plan.pixels.samples["train"], plan.seed)
        pixels_test = _pixels(test, plan.pixels.samples["test"], plan.seed)
        jobs |= {"pixels": lambda: probe(PIXELS, pixels_train, pixels_test), "random": lambda: probe(RANDOM_ENCODER)}
        sizes |= {"pixels": pixels_train[0].size, "random": train.features[RANDOM_ENCODER].size}
    jobs = {name: jobs[name] for name in sorted(jobs, key=sizes.get, reverse=True)}  # threads take the longest first
    jobs["knn"] = lambda: knn_accuracy(
        train_x, train.labels, test_x, test.labels, plan.knn_k, plan.knn_temperature, device=device
    )
    what = "linear probe and kNN" + (", baselines (raw pixels, random encoder)" if plan.baselines else "")
    together = "side by side" if device.type == "cpu" else "one after another"
    with phase(f"evaluation: {what} on {len(train_x):,} + {len(test_x):,} images, {together}"):
        results = side_by_side(jobs, device, quiet=QUIET)
    probe_result = results["probe"]
    metrics = {"probe_accuracy": probe_result.accuracy, "knn_accuracy": results["knn"]}
    if probe_result.weight_decay is not None:
        metrics["probe_weight_decay"] = probe_result.weight_decay
    if plan.baselines:
        metrics["baseline_pixels_probe_accuracy"] = results["pixels"].accuracy
        metrics["baseline_random_encoder_probe_accuracy"] = results["random"].accuracy
    return metrics, probe_result


def _reconstruction(
    method: Method, plan: EvaluationPlan, pixels: Pixels, device: torch.device, out_dir: Path
) -> tuple[tuple[Reconstructions, np.ndarray], dict[str, float], list[Path]]:
    """``((the method's reconstructions of the test split, PCA's per-image errors at the bottleneck's k, fitted on
    the images the method pretrained on), metrics, plots)``: the reconstructions, interpolations and, for a
    generative method, samples of the prior."""
    with phase("evaluation: reconstructions of the test split"):
        result = reconstruct_split(method, plan.shards, device)
    seen = ~np.isin(pixels[1], plan.anomaly.excluded if plan.anomaly else ())
    pca_errors = pca_reconstruction_errors(pixels[0][seen], pixels[2], method.spec.bottleneck)
    metrics = result.metrics | {"pca_recon_mse": float(pca_errors.mean())}
    metrics["recon_mse_over_pca"] = metrics["recon_mse"] / metrics["pca_recon_mse"]
    originals = result.originals
    plots = [
        save_image_grid([originals, result.reconstructions], out_dir / "reconstructions.png"),
        save_image_grid(
            interpolations(method, originals[0::2], originals[1::2], steps=10), out_dir / "interpolations.png"
        ),
    ]
    if Capability.GENERATIVE in plan.capabilities:
        samples = prior_samples(method, 64, seed=plan.seed)
        plots.append(save_image_grid(list(samples.split(8)), out_dir / "prior_samples.png"))
    return (result, pca_errors), metrics, plots


def _anomaly_curves(
    plan: EvaluationPlan,
    train: SplitFeatures,
    test: SplitFeatures,
    pixels: Pixels,
    reconstructed: tuple[Reconstructions, np.ndarray] | None,
    device: torch.device,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{score: (scores (N,), anomalous (N,))}`` of every score the method supports and PCA's residual (that of
    ``reconstructed``, the method's reconstructions and PCA's errors, where it reconstructs)."""
    excluded, train_x, test_x = plan.anomaly.excluded, train.features[ENCODER], test.features[ENCODER]
    normal = ~np.isin(train.labels, excluded)
    with phase(
        f"evaluation: anomaly scores of {len(test_x):,} test images against {int(normal.sum()):,} training images"
    ):
        scores = {
            KNN: (knn_cosine_scores(train_x[normal], test_x, plan.anomaly.knn_k, device), test.labels),
            MAHALANOBIS: (mahalanobis_scores(train_x[normal], test_x), test.labels),
        }
        if reconstructed is not None:
            result, pca_errors = reconstructed
            scores[RECONSTRUCTION] = (result.errors, result.labels)
            if result.negative_elbo is not None:
                scores[NEGATIVE_ELBO] = (result.negative_elbo, result.labels)
            scores[PCA_RESIDUAL] = (pca_errors, pixels[3])
        else:
            seen = ~np.isin(pixels[1], excluded)  # PCA fits what the method trained on
            scores[PCA_RESIDUAL] = (
                pca_reconstruction_errors(pixels[0][seen], pixels[2], plan.anomaly.pca_k),
                pixels[3],
            )
    return {name: (score, anomalous_labels(labels, excluded)) for name, (score, labels) in scores.items()}


def anomaly_metrics(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """``anomaly_auroc_<score>`` for each ``(scores (N,), anomalous (N,))`` of ``curves``; PCA's residual as
    ``pca_anomaly_auroc``."""
    return {
        ("pca_anomaly_auroc" if name == PCA_RESIDUAL else f"anomaly_auroc_{name}"): auroc(*curve)
        for name, curve in curves.items()
    }


def _pca_pixels(plan: EvaluationPlan, train: SplitFeatures, test: SplitFeatures) -> Pixels:
    """Train and test pixels in [0, 1] with their labels, for PCA: the workers' when the baseline kept the images'
    own size and every image, else read whole here (does not scale)."""
    if plan.pixels.side == plan.pixels.native_side:
        return *_pixels(train, len(train.labels), plan.seed), *_pixels(test, len(test.labels), plan.seed)
    return *extract_features(None, plan.shards, "train"), *extract_features(None, plan.shards, "test")
