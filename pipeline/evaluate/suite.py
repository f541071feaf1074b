"""The evaluation a pretraining run ends with: probe and kNN of the encoder, and the baselines beside them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.config import JobConfig
from pipeline.data.manifest import Manifest
from pipeline.evaluate.features import extract_features
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.plots import confusion_png
from pipeline.evaluate.probe import linear_probe
from pipeline.models import EncoderSpec, build_encoder


def evaluate_encoder(
    encoder: nn.Module, spec: EncoderSpec, config: JobConfig, manifest: Manifest, out_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """``(metrics, PNG paths)``: ``probe_accuracy``, ``knn_accuracy`` and, with ``eval.baselines``,
    ``baseline_pixels_probe_accuracy`` and ``baseline_random_encoder_probe_accuracy``."""
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
    if config.eval.baselines:
        torch.manual_seed(config.train.seed)
        baselines = {"baseline_pixels_probe_accuracy": None, "baseline_random_encoder_probe_accuracy": build_encoder(spec)[0]}
        for name, model in baselines.items():
            (train_x, train_y), (test_x, test_y) = features(model)
            metrics[name] = linear_probe(train_x, train_y, test_x, test_y, config.eval.probe_max_iter).accuracy
    return metrics, plots
