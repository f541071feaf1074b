"""Evaluation of a frozen encoder on the shard streams (no augmentation): linear probe, kNN, baselines, plots."""

from pipeline.evaluate.features import extract_features
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.probe import ProbeResult, linear_probe

__all__ = ["ProbeResult", "extract_features", "knn_accuracy", "linear_probe"]
