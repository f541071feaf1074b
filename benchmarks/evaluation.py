"""What evaluation costs: its time against the number of images, and against the evaluation it replaced.

    python -m benchmarks.evaluation scaling [--sizes 10000 50000 200000] [--image-size 64] [--test 5000]
    python -m benchmarks.evaluation compare --run ray_results/RUN [--shards data/fashion-mnist]

``scaling`` (``make bench-eval``): synthetic sets of ``--sizes`` training images (and a fixed ``--test`` split, as a
validation set does not grow with the training set) of ``--image-size`` px, 3 channels. For each, one real 2-worker
Ray Train run of SimCLR with the small CNN as ``jobs/simclr_fashion_mnist.yaml`` configures it, capped at
``--steps`` steps (their images/s gives the time of a whole pretraining epoch on the set), then evaluation as
``sslpipe pretrain`` ends: every rank's feature pass over its share (encoder, random encoder, pixels), the driver's
gather, the probes and kNN side by side. Evaluation must grow linearly with the images and stay under the epoch.

``compare``: the demo's evaluation (Fashion-MNIST, the encoder of a finished ``sslpipe pretrain`` run) the way it
was before (the driver reads the shards three times with one loader process, then three scikit-learn probes one after
another with the default BLAS threads, then kNN) and the way it is now, in one process, with both sets of accuracies.

Both print a table and write ``benchmarks/results/evaluation-<mode>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from augment.presets import to_unit_float
from benchmarks.common import command_line, local_ray, print_table, write_results
from pipeline.config import JobConfig, load_config, with_values
from pipeline.data import evaluation_loader, read_manifest, write_shards
from pipeline.data.sources import Source, SourceSplit
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.probe import linear_probe
from pipeline.evaluate.suite import evaluate_method, worker_features
from pipeline.job import evaluation_plan, features_folder, resolve_paths
from pipeline.methods import trained_method
from pipeline.models import build_encoder
from pipeline.train import fit
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.pretraining import Pretraining

JOB = Path(__file__).resolve().parent.parent / "jobs" / "simclr_fashion_mnist.yaml"
CPUS = 2
CLASSES = 10
NOISE, ANGLE_JITTER = 0.35, 0.5  # std of each pixel's noise; of each image's angle (radians)


def lazy_synthetic(num_train: int, num_test: int, image_size: int, channels: int = 3, seed: int = 0) -> Source:
    """The ``synthetic`` source's oriented gratings (class-dependent angle, frequency and tint; random phase), made
    harder (a jittered angle, a random contrast, close tints, more noise: pixels probe at about 0.53 and a random
    small CNN at 0.86, so the probes work for their numbers), and made as the writer asks for them instead of all
    at once (200,000 images of 64 px would take 20 GB as the float arrays that source builds)."""
    rng = np.random.default_rng(seed)
    angles, frequencies = rng.uniform(0, np.pi, CLASSES), rng.uniform(1.5, 4.0, CLASSES)
    tints = rng.uniform(0.7, 0.9, (CLASSES, channels))
    grid = np.linspace(-1, 1, image_size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    def split(number: int, total: int) -> SourceSplit:
        labels = np.random.default_rng([seed, number]).integers(0, CLASSES, total)

        def load(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            chosen, count = labels[indices], len(indices)
            draw = np.random.default_rng([seed, number, int(indices[0]), count])
            phase = draw.uniform(0, 2 * np.pi, (count, 1, 1)).astype(np.float32)
            angle = angles[chosen] + draw.normal(0, ANGLE_JITTER, count)
            contrast = draw.uniform(0.05, 0.4, (count, 1, 1)).astype(np.float32)
            projection = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
            wave = 0.5 + contrast * np.sin(np.pi * frequencies[chosen][:, None, None] * projection + phase)
            noise = draw.normal(0, NOISE, (count, image_size, image_size, 1)).astype(np.float32)
            images = wave[..., None] * tints[chosen][:, None, None, :] + noise
            return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), chosen

        return SourceSplit(total, (image_size, image_size, channels), load)

    details = {"num_train": num_train, "num_test": num_test, "image_size": image_size, "channels": channels}
    return Source(
        "synthetic",
        {"train": split(0, num_train), "test": split(1, num_test)},
        [f"class{i}" for i in range(CLASSES)],
        details,
    )


def timed(call: Callable[..., object], *args: object) -> tuple[object, float]:
    """``(call(*args), seconds it took)``."""
    started = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - started


def run_on_workers(config: JobConfig, manifest, name: str) -> tuple[dict, dict, float, float]:
    """``fit`` with evaluation's feature pass as its finisher; ``(state, features, worker s, gather s)``."""
    extraction = worker_features(evaluation_plan(config, manifest), features_folder(config))
    extraction.clear()
    state = fit(config, name, step=Pretraining(finishers=(extraction,)))
    (features, worker_s), gather_s = timed(extraction.gather)
    return state, features, worker_s, gather_s


def scaling(args: argparse.Namespace) -> None:
    root = Path(args.out)
    rows, results = [], []
    for size in args.sizes:
        shards = root / f"synthetic-{size}-{args.image_size}px"
        if not (shards / "manifest.json").exists():
            print(f"writing {size:,} + {args.test:,} images of {args.image_size} px to {shards} ...", flush=True)
            write_shards(
                lazy_synthetic(size, args.test, args.image_size),
                shards,
                samples_per_shard=4096,
                overwrite=True,
                progress=False,
            )
        manifest = read_manifest(shards)
        name = f"evaluation-{size}"
        with tempfile.TemporaryDirectory(prefix="sslpipe-bench-eval-") as storage:
            config = resolve_paths(
                load_config(
                    JOB,
                    [
                        f"data.shards={shards}",
                        "train.epochs=1",
                        f"train.max_steps_per_epoch={args.steps}",
                        f"train.storage_path={storage}",
                        *args.overrides,
                    ],
                ),
                name,
            )
            with local_ray(CPUS):
                (state, features, worker_s, gather_s), fit_s = timed(run_on_workers, config, manifest, name)
            method = trained_method(config.method, config.model, manifest, state, config.data.crop_size)
            (metrics, _), driver_s = timed(
                evaluate_method, method, evaluation_plan(config, manifest), Path(storage) / "eval", features
            )
        trained = state["metrics"]
        epoch_s = size / trained["images_per_s"]  # a whole epoch at the capped steps' rate, all ranks
        evaluation_s = worker_s + gather_s + driver_s
        images = size + args.test
        result = {
            "train_images": size,
            "test_images": args.test,
            "image_size": args.image_size,
            "worker_features_s": worker_s,
            "gather_s": gather_s,
            "probes_knn_s": driver_s,
            "evaluation_s": evaluation_s,
            "ms_per_image": 1000 * evaluation_s / images,
            "pretraining_images_per_s": trained["images_per_s"],
            "pretraining_epoch_s": epoch_s,
            "evaluation_over_epoch": evaluation_s / epoch_s,
            "fit_wall_s": fit_s,
            "metrics": metrics,
        }
        results.append(result)
        rows.append(
            {
                "train images": f"{size:,}",
                "features (workers) s": worker_s,
                "gather s": gather_s,
                "probes + kNN s": driver_s,
                "evaluation s": evaluation_s,
                "ms / image": result["ms_per_image"],
                "pretraining epoch s": epoch_s,
                "evaluation / epoch": result["evaluation_over_epoch"],
                "probe": metrics["probe_accuracy"],
                "pixels": metrics["baseline_pixels_probe_accuracy"],
            }
        )
        print_table(rows)
    sizes = np.array([r["train_images"] + r["test_images"] for r in results], dtype=float)
    seconds = np.array([r["evaluation_s"] for r in results])
    slope, intercept = np.polyfit(sizes, seconds, 1)
    fit_note = {
        "seconds_per_1k_images": 1000 * slope,
        "intercept_s": intercept,
        "largest_relative_residual": float(np.max(np.abs(seconds - (slope * sizes + intercept)) / seconds)),
    }
    print(
        f"\nlinear fit: {1000 * slope:.2f} s per 1,000 images + {intercept:.1f} s; largest residual "
        f"{100 * fit_note['largest_relative_residual']:.1f}% of the measured time"
    )
    write_results(
        "evaluation-scaling",
        {
            "command": command_line("benchmarks.evaluation"),
            "steps": args.steps,
            "sizes": results,
            "linear_fit": fit_note,
        },
    )


@torch.no_grad()
def previous_features(encoder, location: str, split: str, batch_size: int, image_size: int):
    """The feature extraction evaluation had before, as it was: in this process, one loader process, shard order,
    the encoder called on whole batches; ``encoder=None`` gives the pixels in [0, 1]."""
    loader = evaluation_loader(location, split, batch_size, image_size=image_size, num_workers=1)
    if encoder is not None:
        encoder.eval().to("cpu", memory_format=torch.channels_last)
    features, labels = [], []
    for images, batch_labels, _ in loader:
        x = to_unit_float(images).contiguous(memory_format=torch.channels_last)
        features.append((encoder(x) if encoder is not None else x.flatten(1)).float().numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(features), np.concatenate(labels)


def previous_evaluation(method, config: JobConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Evaluation as it was before: in the driver, three reads of both splits (encoder, pixels, random encoder)
    with one loader process, three scikit-learn probes one after another (default BLAS threads), kNN on the CPU."""
    location, max_iter, times = config.evaluation_shards, config.eval.probe_max_iter, {}

    def features(encoder, what):
        both, seconds = timed(
            lambda: [
                previous_features(encoder, location, s, config.eval.batch_size, config.data.crop_size)
                for s in ("train", "test")
            ]
        )
        times[f"features: {what}"] = seconds
        return both

    def probe(both, what):
        (train_x, train_y), (test_x, test_y) = both
        result, times[f"probe: {what}"] = timed(
            lambda: linear_probe(train_x, train_y, test_x, test_y, max_iter, solver="sklearn")
        )
        return result.accuracy

    encoder = features(method.encoder, "encoder")
    metrics = {"probe_accuracy": probe(encoder, "encoder")}
    (train_x, train_y), (test_x, test_y) = encoder
    metrics["knn_accuracy"], times["kNN"] = timed(
        lambda: knn_accuracy(train_x, train_y, test_x, test_y, config.eval.knn_k, config.eval.knn_temperature)
    )
    metrics["baseline_pixels_probe_accuracy"] = probe(features(None, "pixels"), "pixels")
    torch.manual_seed(config.train.seed)
    random_encoder = build_encoder(method.spec)[0]
    metrics["baseline_random_encoder_probe_accuracy"] = probe(
        features(random_encoder, "random encoder"), "random encoder"
    )
    return metrics, times


def compare(args: argparse.Namespace) -> None:
    run = Path(args.run).resolve()
    checkpoint = max(path for path in run.glob("checkpoint_*") if path.is_dir())
    state = load_checkpoint(checkpoint)
    config = JobConfig.from_stored(state["config"], f"{checkpoint}")
    config = with_values(
        config,
        {"data.shards": str(Path(args.shards).resolve()), "eval.shards": None, "eval.baselines": True},
        "compare",
    )  # as the demo's job evaluates
    manifest = read_manifest(config.data.shards)
    method = trained_method(config.method, config.model, manifest, state, config.data.crop_size)
    runs = {}
    for round_ in range(args.repeats):
        (before, before_times), before_s = timed(previous_evaluation, method, config)
        print(f"before: {before_s:.0f} s {before}", flush=True)
        with tempfile.TemporaryDirectory(prefix="sslpipe-bench-eval-") as storage:
            shutil.copytree(run, Path(storage) / run.name)  # resumed with no epoch left: only the feature pass runs
            resumed = resolve_paths(with_values(config, {"train.storage_path": storage}, "compare"), run.name)
            with local_ray(CPUS):
                (_, features, worker_s, gather_s), fit_s = timed(run_on_workers, resumed, manifest, run.name)
            (now, _), driver_s = timed(
                evaluate_method, method, evaluation_plan(resumed, manifest), Path(storage) / "eval", features
            )
        now_s = worker_s + gather_s + driver_s
        print(
            f"now: {now_s:.0f} s (workers {worker_s:.0f}, gather {gather_s:.0f}, probes and kNN {driver_s:.0f}; "
            f"the resumed Ray Train run took {fit_s:.0f} s in all) {now}",
            flush=True,
        )
        runs[round_] = {
            "before_s": before_s,
            "before_phases_s": before_times,
            "before": before,
            "now_s": now_s,
            "now_phases_s": {"worker_features": worker_s, "gather": gather_s, "probes_knn": driver_s},
            "now_resumed_fit_wall_s": fit_s,
            "now": now,
        }
    last = runs[args.repeats - 1]
    print_table(
        [
            {
                "metric": key,
                "before": last["before"][key],
                "now": last["now"][key],
                "difference (points)": 100 * (last["now"][key] - last["before"][key]),
            }
            for key in last["before"]
        ]
    )
    print_table(
        [
            {"round": r, "before s": v["before_s"], "now s": v["now_s"], "now / before": v["now_s"] / v["before_s"]}
            for r, v in runs.items()
        ]
    )
    write_results(
        "evaluation-compare",
        {
            "command": command_line("benchmarks.evaluation"),
            "run": str(run),
            "checkpoint": checkpoint.name,
            "rounds": runs,
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    grow = modes.add_parser("scaling")
    grow.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    grow.add_argument("--image-size", type=int, default=64)
    grow.add_argument("--test", type=int, default=5000)
    grow.add_argument("--steps", type=int, default=20, help="pretraining steps per size (their rate sizes the epoch)")
    grow.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "sslpipe-bench-evaluation"))
    grow.add_argument("overrides", nargs="*", help="section.key=value for the job")
    side = modes.add_parser("compare")
    side.add_argument("--run", required=True, help="a finished `sslpipe pretrain` run folder (ray_results/RUN)")
    side.add_argument("--shards", default="data/fashion-mnist")
    side.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    scaling(args) if args.mode == "scaling" else compare(args)


if __name__ == "__main__":
    main()
