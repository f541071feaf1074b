"""The evaluation's feature pass in bf16 autocast against float32 on this machine's CPUs: time over both splits and
what the probe reads from the features, for the Fashion-MNIST SimCLR job's encoder after a short training.

    python -m benchmarks.feature_precision [--train-seconds 120] [--repeats 2] [--shards data/fashion-mnist]

The encoder trains for ``--train-seconds`` in the plain loop of ``benchmarks.throughput`` (the job's method, batch
256, base LR, in the job's ``train.amp``), so that the features are those of an encoder that has learned. Then the
feature pass (``extract_features`` of the train and test splits, 60,000 + 10,000 images, in this process with 2
threads) alternates float32 and bf16 autocast (``--repeats`` timed runs each, after one warm-up run each), and the
linear probe (the job's ``eval.probe_max_iter``; scikit-learn's and the torch probe) and kNN (the job's) score each
precision's features as evaluation stored them before (float32) and stores them now (float16). Also reports how
close the two precisions' features are: the mean cosine between each image's two feature rows and the largest
difference relative to the row's norm. Prints the table; writes ``benchmarks/results/feature_precision.json``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch
from torch import nn

from benchmarks.common import command_line, interleaved, medians, print_table, write_results
from benchmarks.precision import PRECISIONS
from benchmarks.throughput import BATCH_SIZE, JOBS, Setup, Trainee, augmenter, shard_loader
from pipeline.config import load_config
from pipeline.config.job_config import JobConfig
from pipeline.data import LabeledShards, read_manifest
from pipeline.evaluate.feature_files import half_if_fits
from pipeline.evaluate.features import extract_features
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.probe import linear_probe
from pipeline.models import encoder_spec
from pipeline.train.amp import precision_name

CPUS = 2
Features = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train features, labels, test features, labels


def trained_encoder(config: JobConfig, seconds: float) -> nn.Module:
    """The job's encoder after ``seconds`` of training in the plain loop (at most one epoch)."""
    setup = Setup(config, encoder_spec(config.model, read_manifest(config.data.shards)), torch.empty(0))
    trainee, augment, loader = Trainee(setup), augmenter(setup), shard_loader(setup)
    started = time.perf_counter()
    for images, _, _ in loader:
        trainee.step(augment(images))
        if time.perf_counter() - started >= seconds:
            break
    return trainee.method.encoder


def feature_pass(encoder: nn.Module, shards: LabeledShards, autocast: bool, kept: dict[bool, Features]) -> float:
    """images/s of one pass over both splits; the features are kept in ``kept[autocast]``."""
    started = time.perf_counter()
    kept[autocast] = (
        *extract_features(encoder, shards, "train", autocast=autocast),
        *extract_features(encoder, shards, "test", autocast=autocast),
    )
    return (len(kept[autocast][0]) + len(kept[autocast][2])) / (time.perf_counter() - started)


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean cosine between rows of ``a`` and ``b`` ``(N, D)`` and the largest ``|a - b|`` relative to ``a``'s row
    norm."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) + 1e-12
    cosine = (a * b).sum(axis=1) / (norms * (np.linalg.norm(b, axis=1) + 1e-12))
    return {"mean_cosine": float(cosine.mean()), "max_relative_difference": float((np.abs(a - b).max(1) / norms).max())}


def stored_accuracies(features: Features, config: JobConfig) -> dict[str, float]:
    """The probe (scikit-learn's, as evaluation runs it at this size; and the torch probe, which larger sets get)
    and kNN of ``features`` as they were stored before (float32) and as the ranks store them now (float16)."""
    train_x, train_y, test_x, test_y = features
    accuracies = {}
    for stored, (train, test) in {
        "float32": (train_x, test_x),
        "float16": (half_if_fits(train_x, "train"), half_if_fits(test_x, "test")),
    }.items():
        for solver in ("sklearn", "torch"):
            probe = linear_probe(train, train_y, test, test_y, config.eval.probe_max_iter, solver=solver)
            accuracies[f"probe ({solver}), {stored}"] = probe.accuracy
        accuracies[f"kNN, {stored}"] = knn_accuracy(
            train, train_y, test, test_y, config.eval.knn_k, config.eval.knn_temperature
        )
    return accuracies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="data/fashion-mnist")
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(CPUS)
    config = load_config(
        JOBS / "simclr_fashion_mnist.yaml", [f"data.shards={args.shards}", f"data.batch_size={BATCH_SIZE}"]
    )
    encoder = trained_encoder(config, args.train_seconds)
    shards, kept = LabeledShards(config.data.shards, config.eval.batch_size), {}
    variants = {name: partial(feature_pass, encoder, shards, autocast, kept) for name, autocast in PRECISIONS.items()}
    runs = interleaved(variants, args.repeats)
    median = medians(runs)
    rows = [
        {
            "precision": name,
            "images/s": median[name],
            "vs float32": median[name] / median[precision_name(False)],
            **stored_accuracies(kept[autocast], config),
        }
        for name, autocast in PRECISIONS.items()
    ]
    close = agreement(kept[False][0], kept[True][0])
    print_table(rows)
    print(f"bf16 against float32 features (train split): {close}")
    write_results(
        "feature_precision",
        {
            "command": command_line("benchmarks.feature_precision", argv),
            "settings": {"train_seconds": args.train_seconds, "repeats": args.repeats, "torch_threads": CPUS},
            "rows": rows,
            "runs": runs,
            "agreement": close,
        },
    )


if __name__ == "__main__":
    main()
