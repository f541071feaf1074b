"""The learning gate's SimCLR and BYOL runs (``tests/test_learning_gate.py``), measured per seed: the probe of the
pretrained encoder against its random initialisation, and the first epochs' losses (SimCLR's NT-Xent against
``log(2 x global batch - 1)``).

    python -m benchmarks.learning_gate [--method simclr] [--workers 2] [--seeds 0 1 2] [--label correct]
        [--subset data/fashion-subset]

``--workers 0`` trains in this process (``train.num_workers=0``), as the BYOL gate does.

The gate's margins and its loss window come from these runs. To measure a breakage the gate must catch, run the
same command from a copy of the repository broken on purpose (``PYTHONPATH=<copy>``, so the Ray Train workers load
it too) with another ``--label``; each (method, workers, label)'s rows replace its earlier ones in
``benchmarks/results/learning_gate.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, command_line, local_ray, print_table, write_results
from pipeline.data import open_source, write_shards
from pipeline.data.sources import Source, array_split
from pipeline.data.subset import balanced_subset

JOBS = Path(__file__).resolve().parent.parent / "jobs"
# the gate's model: the job's width, a 16-d representation (the random baseline is weaker there than at 1024-d,
# 0.83 on this subset, so two epochs show the gap), two epochs
GATE = ["model.width=16", "model.embed_dim=16", "train.epochs=2", "eval.probe_max_iter=200"]


def fashion_subset(out: Path) -> Path:
    """A fixed Fashion-MNIST subset in ``out`` (written once): 10,000 train images (1,000 per class,
    ``balanced_subset`` seed 0) and the whole 10,000-image test split, in shards of 2,500."""
    if (out / "manifest.json").exists():
        return out
    full = open_source("fashion-mnist", download=False)
    splits = {}
    for name, keep in (("train", 10_000), ("test", 10_000)):
        images, labels = full.splits[name].load(np.arange(full.splits[name].num_samples))
        rows = balanced_subset(labels, keep / len(labels), seed=0)
        splits[name] = array_split(images[rows], labels[rows])
    source = Source(full.name, splits, full.class_names, full.details)
    write_shards(source, out, samples_per_shard=2500, progress=False)
    return out


def gate_overrides(shards: Path, seed: int, name: str) -> list[str]:
    """The gate's overrides of a shipped job: its subset, model, epochs and seed, random-init baselines on."""
    return [f"data.shards={shards}", *GATE, f"train.seed={seed}", "eval.baselines=true", f"train.name={name}"]


def measure(subset: Path, seed: int, label: str, method: str = "simclr", workers: int = 2) -> dict:
    """One gate run of ``jobs/<method>_fashion_mnist.yaml`` on ``workers`` Ray Train workers (0: in this process, with
    both cores): probe, random-init probe, per-epoch losses."""
    from mlflow.tracking import MlflowClient

    from pipeline.commands.pretrain import pretrain
    from pipeline.config import load_config

    where = ["train.num_workers=0", "train.cpus_per_worker=2"] if workers == 0 else [f"train.num_workers={workers}"]
    name = f"gate-{method}-{workers}-{label}-{seed}"
    config = load_config(JOBS / f"{method}_fashion_mnist.yaml", [*gate_overrides(subset, seed, name), *where])
    summary = pretrain(config, register=False)
    history = MlflowClient(summary.tracking_uri).get_metric_history(summary.run_id, "loss")
    return {
        "method": method,
        "workers": workers,
        "label": label,
        "seed": seed,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "probe_accuracy": summary.metrics["probe_accuracy"],
        "random_init_probe_accuracy": summary.metrics["baseline_random_encoder_probe_accuracy"],
        "losses": [m.value for m in sorted(history, key=lambda m: m.step)],
        "chance_loss": math.log(2 * config.data.batch_size * config.train.ranks() - 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["simclr", "byol"], default="simclr")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers; 0: train in this process")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--label", default="correct", help="what the code measured is: correct, or the breakage")
    parser.add_argument("--subset", type=Path, default=Path("data/fashion-subset"))
    args = parser.parse_args(argv)
    subset = fashion_subset(args.subset)
    command = command_line("benchmarks.learning_gate", argv)
    code = os.environ.get("PYTHONPATH") or "this checkout"
    with local_ray(4):
        rows = [
            measure(subset, seed, args.label, args.method, args.workers) | {"command": command, "code": code}
            for seed in args.seeds
        ]
    print_table(
        [
            {
                "method": r["method"],
                "workers": r["workers"],
                "label": r["label"],
                "seed": r["seed"],
                "probe gap, points": 100 * (r["probe_accuracy"] - r["random_init_probe_accuracy"]),
                "first-epoch loss below chance": r["chance_loss"] - r["losses"][0] if r["method"] == "simclr" else "",
            }
            for r in rows
        ]
    )
    path = RESULTS / "learning_gate.json"
    kept = json.loads(path.read_text())["runs"] if path.exists() else []
    key = (args.method, args.workers, args.label)
    runs = [r for r in kept if (r.get("method", "simclr"), r.get("workers", 2), r["label"]) != key] + rows
    payload = {"runs": runs}
    write_results("learning_gate", payload)
    return payload


if __name__ == "__main__":
    main()
