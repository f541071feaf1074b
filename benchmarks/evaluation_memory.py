"""The driver's peak memory while it evaluates features of ImageNet's width: the gather of the ranks' files, the
linear probe and kNN, as ``sslpipe pretrain`` ends.

    python -m benchmarks.evaluation_memory [--train 200000] [--test 10000] [--dim 2048] [--ranks 2]
        [--classes 10] [--max-iter 100] [--stored float16]

Synthetic post-ReLU features (``--classes`` Gaussian clusters in ``--dim`` dimensions, class-dependent means) are
written as ``--ranks`` Ray Train ranks write them (each rank a contiguous share of the split, its rows sorted by
sample index, the indices a shuffled order as the shards hold them), in ``--stored`` precision. A fresh Python
process, the driver, then gathers them (``WorkerFeatures.gather``) and runs the probe and kNN of the encoder
(``evaluate.suite``'s own, as a job with ``eval.baselines=false`` runs them: the torch probe at this size, with
``--max-iter`` iterations; memory does not depend on them) on the CPU, while a thread samples its
``/proc/self/status`` every 10 ms. Reported: the peak resident memory (``VmHWM``, exact; it counts the pages of
memory-mapped files the process touched, which the kernel reclaims under pressure) and the peak anonymous memory
(``RssAnon``, sampled: what the process cannot give back), each at the start (Python, torch, scikit-learn loaded)
and what evaluation added to it against the half-precision train matrix (``N x D x 2`` bytes), the phases'
seconds and the probe and kNN accuracies. Writes
``benchmarks/results/evaluation_memory.json`` (``--add``: beside its rows, e.g. a run of an earlier commit with
``--stored float32``, what the workers wrote before).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from benchmarks.common import RssSampler, command_line, machine_info, print_table, results_to_extend, write_results

CPUS = 2
NOISE = 12.0  # the clusters' spread: the probe near 0.9 at 2,048 dimensions and 10 classes
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def status() -> dict[str, int]:
    """This process's ``STATUS_FIELDS`` from ``/proc/self/status``, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in STATUS_FIELDS:
            values[name] = int(rest.split()[0]) * 1024
    return values


def anonymous(process: psutil.Process) -> int:
    """Resident bytes of ``process`` that no file backs (``RssAnon``: resident minus shared)."""
    info = process.memory_info()
    return info.rss - info.shared


def write_ranks(folder: Path, args: argparse.Namespace) -> None:
    """``args.ranks`` ranks' files of both splits, as ``WorkerFeatures`` writes them (encoder features only)."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1, (args.classes, args.dim)).astype(np.float32)
    for split, total in (("train", args.train), ("test", args.test)):
        indices = rng.permutation(total)
        for rank, share in enumerate(np.array_split(indices, args.ranks)):
            share = np.sort(share)
            labels = share % args.classes
            features = np.empty((len(share), args.dim), args.stored)
            for start in range(0, len(share), 8192):
                part = labels[start : start + 8192]
                noise = rng.standard_normal((len(part), args.dim), np.float32) * NOISE
                features[start : start + len(part)] = np.maximum(means[part] + noise, 0)
            for kind, array in (("labels", labels), ("indices", share), ("encoder", features)):
                np.save(folder / f"{split}-{kind}-{rank:04d}.npy", array)
        for rank in range(args.ranks):
            (folder / f"rank-{rank:04d}.json").write_text(json.dumps({"world_size": args.ranks, "seconds": 0.0}))


def driver(folder: str, classes: int, max_iter: int) -> None:
    """The driver's part, in this process: gather, probe and kNN under the sampler; prints its JSON line."""
    from pipeline.data import LabeledShards
    from pipeline.evaluate import suite
    from pipeline.evaluate.evaluation_plan import EvaluationPlan
    from pipeline.evaluate.features import WorkerFeatures

    torch.set_num_threads(CPUS)
    started, this = status(), psutil.Process()
    shards = LabeledShards(folder)
    plan = EvaluationPlan(
        shards, tuple(f"class{i}" for i in range(classes)), "simclr", frozenset(), 0, max_iter, 200, 0.1, False,
        None, None, 0, False,
    )  # fmt: skip
    with RssSampler(lambda: {"driver": this}, interval=0.01, measure=anonymous) as sampler:
        clock = time.perf_counter()
        features, _ = WorkerFeatures(shards, folder=folder).gather()
        gather_s, clock = time.perf_counter() - clock, time.perf_counter()
        metrics, _ = suite._probes(plan, features["train"], features["test"], torch.device("cpu"))
        probes_s = time.perf_counter() - clock
    ended = status()
    train = features["train"].features["encoder"]
    print(
        json.dumps(
            {
                "start_rss": started["VmRSS"],
                "start_anon": started["RssAnon"],
                "peak_rss": ended["VmHWM"],
                "peak_anon": max([*sampler.series.get("driver", []), ended["RssAnon"]]),
                "gathered_dtype": str(train.dtype),
                "gathered_memory_mapped": isinstance(train, np.memmap),
                "gather_s": gather_s,
                "probe_knn_s": probes_s,
                "metrics": metrics,
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=200_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--stored", choices=["float16", "float32"], default="float16")
    parser.add_argument("--label", default="", help="what this row measures (e.g. the commit)")
    parser.add_argument("--add", action="store_true", help="add this run's row to the results file")
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        driver(args.driver, args.classes, args.max_iter)
        return
    settings = {k: getattr(args, k) for k in ("train", "test", "dim", "ranks", "classes", "max_iter")}
    payload = results_to_extend("evaluation_memory", {"settings": settings}) if args.add else {"rows": []}
    with tempfile.TemporaryDirectory(prefix="sslpipe-bench-memory-") as folder:
        write_ranks(Path(folder), args)
        command = [sys.executable, "-m", "benchmarks.evaluation_memory", "--driver", folder]
        command += ["--classes", str(args.classes), "--max-iter", str(args.max_iter)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    half = args.train * args.dim * 2
    row = {
        "label": args.label or f"stored {args.stored}",
        "stored": args.stored,
        "command": command_line("benchmarks.evaluation_memory", argv),
        "commit": machine_info()["commit"],
        "date": machine_info()["date"],
        "half_matrix_bytes": half,
        **measured,
        "added_rss_over_half_matrix": (measured["peak_rss"] - measured["start_rss"]) / half,
        "added_anon_over_half_matrix": (measured["peak_anon"] - measured["start_anon"]) / half,
    }
    payload["rows"] = [*payload["rows"], row]
    print_table(
        [
            {
                "run": r["label"],
                "RSS GB: start": r["start_rss"] / 1e9,
                "peak": r["peak_rss"] / 1e9,
                "added / half matrix": r["added_rss_over_half_matrix"],
                "anonymous GB: start": r["start_anon"] / 1e9,
                "peak ": r["peak_anon"] / 1e9,
                "added / half matrix ": r["added_anon_over_half_matrix"],
                "gather s": r["gather_s"],
                "probe + kNN s": r["probe_knn_s"],
                "probe": r["metrics"]["probe_accuracy"],
                "kNN": r["metrics"]["knn_accuracy"],
            }
            for r in payload["rows"]
        ]
    )
    write_results("evaluation_memory", {"settings": settings, "rows": payload["rows"]})


if __name__ == "__main__":
    main()
