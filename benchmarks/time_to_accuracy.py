"""Time to accuracy: SimCLR pretraining on our real path (``pipeline.train.fit``: Ray Train, 2 workers on 2 cores,
``jobs/simclr_fashion_mnist.yaml``), with a linear probe of the encoder as it stood after each training budget.

    python -m benchmarks.time_to_accuracy [section.key=value ...] [--minutes 5 10 30] [--epochs N] [--per-budget]
                                          [--add]

Minutes count training: the epochs' loop times that ``train_worker`` reports (images / images_per_s), not Ray's
start-up, checkpoints or probes. One run, its cosine schedule sized to the largest budget: ``--epochs`` epochs, or as
many as fit in it at the rate a calibration run (2 epochs of 50 batches, the first one warm-up) measures; with
``--per-budget``, one such run per budget, each schedule sized to its own budget (what a user given that budget
would run). A Ray Train callback keeps, for each budget, the checkpoint of the last epoch that ended within it;
afterwards each is probed as in ``pipeline/evaluate/suite.py`` (features of the frozen encoder, logistic
regression, train -> test).
Prints budget -> epochs -> probe accuracy and writes ``benchmarks/results/time_to_accuracy[-<override>...].json``
(the job as shipped: ``time_to_accuracy.json``), a row per budget with its date and command; ``--add`` keeps that
file's rows of other budgets (same overrides, ``--per-budget`` and machine kind), so budgets can be run apart.

Smoke check (a few minutes): ``train.max_steps_per_epoch=10 eval.probe_max_iter=50 --minutes 0.5 1``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ray.train import Checkpoint, UserCallback

from benchmarks.common import (
    command_line,
    local_ray,
    machine_info,
    print_table,
    results_name,
    results_to_extend,
    write_results,
)
from pipeline.config import JobConfig, load_config, with_values
from pipeline.data import LabeledShards, ShardLoader, read_manifest
from pipeline.evaluate.features import extract_features
from pipeline.evaluate.probe import linear_probe
from pipeline.job import resolve_paths
from pipeline.methods import trained_method
from pipeline.train import fit, steps_in
from pipeline.train.checkpoint import load_checkpoint

JOB = Path(__file__).resolve().parent.parent / "jobs" / "simclr_fashion_mnist.yaml"
CALIBRATION_STEPS = 50  # per epoch: shorter ones overweight the DataLoader start each epoch pays (~1.8 s)
CPUS = 2


class BudgetSnapshots(UserCallback):
    """On the Ray Train controller: after each epoch, adds its training seconds (rank 0's loop time) to the run's
    total and saves the model as ``folder/<budget>.pt`` for every budget (seconds) the total still fits in, so each
    file ends up holding the last epoch that ended within its budget."""

    def __init__(self, folder: str, budgets_s: Sequence[float]) -> None:
        self.folder, self.budgets_s, self.trained_s = Path(folder), list(budgets_s), 0.0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        self.trained_s += metrics[0]["images"] / metrics[0]["images_per_s"]
        fitting = [budget for budget in self.budgets_s if self.trained_s <= budget]
        if checkpoint is None or not fitting:
            return
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
        snapshot = {"model": state["model"], "epoch": state["epoch"], "trained_s": self.trained_s}
        for budget in fitting:
            torch.save(snapshot, self.folder / f"{budget}.pt")


def epoch_seconds(config: JobConfig) -> float:
    """Training seconds per epoch of ``config`` at the rate epoch 1 of a calibration run reaches."""
    steps = min(CALIBRATION_STEPS, config.train.max_steps_per_epoch or CALIBRATION_STEPS)
    calibration = with_values(config, {"train.epochs": 2, "train.max_steps_per_epoch": steps}, "calibration")
    rate = fit(calibration, f"{config.train.name}-calibration")["metrics"]["images_per_s"]
    manifest = read_manifest(config.data.shards)
    loader = ShardLoader(
        config.data.shards,
        "train",
        config.data.batch_size,
        rank=0,
        world_size=config.train.num_workers,
        mode=config.data.mode,
        manifest=manifest,
        exclude_classes=config.data.exclude_classes(len(manifest.class_names)),
    )
    batches = steps_in(loader, 1, config.train.max_steps_per_epoch)[0]
    return batches * config.data.batch_size * config.train.num_workers / rate


def probe_accuracy(config: JobConfig, snapshot: dict) -> float:
    encoder = trained_method(config.method, config.model, read_manifest(config.data.shards), snapshot).encoder
    shards = LabeledShards(config.data.shards, config.eval.batch_size, url_template=config.data.url_template)
    train_x, train_y = extract_features(encoder, shards, "train")
    test_x, test_y = extract_features(encoder, shards, "test")
    return linear_probe(train_x, train_y, test_x, test_y, config.eval.probe_max_iter).accuracy


def train_and_probe(config: JobConfig, budgets_s: Sequence[float], epochs: int, work: str) -> list[dict[str, Any]]:
    """One run of ``epochs`` epochs; a row per budget (seconds): the epochs that fitted and the probe of the encoder
    as it stood after them."""
    name = f"tta-{uuid.uuid4().hex[:8]}"
    config = with_values(config, {"train.epochs": epochs, "train.name": name}, "time_to_accuracy")
    print(f"training {epochs} epochs for budgets of {', '.join(f'{b / 60:g}' for b in budgets_s)} min", flush=True)
    folder = Path(work, name)
    folder.mkdir()
    started = time.perf_counter()
    fit(config, name, callbacks=[BudgetSnapshots(str(folder), budgets_s)])
    wall_s = time.perf_counter() - started
    rows = []
    for budget in budgets_s:
        path = folder / f"{budget}.pt"
        snapshot = torch.load(path, weights_only=True) if path.exists() else None  # None: no epoch fitted
        rows.append(
            {
                "budget min": budget / 60,
                "schedule epochs": epochs,
                "epochs": snapshot["epoch"] if snapshot else 0,
                "trained min": snapshot["trained_s"] / 60 if snapshot else None,
                "probe accuracy": probe_accuracy(config, snapshot) if snapshot else None,
                "fit wall s": wall_s,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", nargs="+", type=float, default=[5.0, 10.0, 30.0], help="training budgets")
    parser.add_argument("--epochs", type=int, help="epochs of the schedule (default: as many as fit the largest)")
    parser.add_argument("--per-budget", action="store_true", help="one run per budget, its schedule sized to it")
    parser.add_argument("--add", action="store_true", help="keep the results file's rows of other budgets")
    parser.add_argument("overrides", nargs="*", help="section.key=value changes to the job")
    args = parser.parse_args(argv)
    budgets_s = sorted(60 * minutes for minutes in args.minutes)
    name = results_name("time_to_accuracy", args.overrides)
    same = {"overrides": args.overrides, "per_budget": args.per_budget}
    kept = (
        [row for row in results_to_extend(name, same)["budgets"] if row["budget min"] * 60 not in budgets_s]
        if args.add
        else []
    )
    torch.set_num_threads(CPUS)

    with tempfile.TemporaryDirectory(prefix="tta-") as work, local_ray(CPUS):
        config = resolve_paths(load_config(JOB, [f"train.storage_path={work}", *args.overrides]), "tta")
        per_epoch_s = None if args.epochs else epoch_seconds(config)
        if per_epoch_s:
            print(f"an epoch takes about {per_epoch_s:.0f} s", flush=True)
        groups = [[budget] for budget in budgets_s] if args.per_budget else [budgets_s]
        rows = [
            row
            for group in groups
            for row in train_and_probe(config, group, args.epochs or max(1, math.floor(group[-1] / per_epoch_s)), work)
        ]
    print_table(rows)
    stamp = {
        "date": machine_info()["date"],
        "command": command_line("benchmarks.time_to_accuracy", argv),
        "estimated_epoch_s": per_epoch_s,
    }
    write_results(
        name,
        {
            "job": str(JOB.relative_to(JOB.parent.parent)),
            **same,
            "config": config.to_dict(),
            "budgets": sorted([*kept, *(row | stamp for row in rows)], key=lambda row: row["budget min"]),
        },
    )


if __name__ == "__main__":
    main()
