"""Throughput benchmark: how close the training pipeline runs to the compute ceiling, and against the usual
alternative, for the Fashion-MNIST jobs.

    python -m benchmarks.throughput [--methods simclr byol vae] [--repeats 3] [--steps 30] [--rss-images 60000]
                                    [--data-workers N]

Every variant trains the model and loss of ``jobs/<method>_fashion_mnist.yaml`` with 256 images per step per
process (``pipeline.train.train_step``) and reports images/s, the median of ``--repeats`` interleaved runs of
``--steps`` steps after warm-up:

* ceiling: views augmented once (a pool of 40 batches) and kept in memory; a plain loop in one process, no data
  path. (Two single-thread processes do more work on the same two cores than one with two threads, so the
  "Ray 2x1" row can pass this ceiling.)
* ours, plain: ShardLoader + ViewAugmenter (Kornia, batched) + the step in this process, no Ray; each run is the
  start of a new loader epoch, like the Ray runs' epochs.
* ours, Ray: ``pipeline.train.fit`` (``TorchTrainer`` running ``train_worker``) with 1 worker of 2 CPUs and with
  2 workers of 1 CPU, 256 images per worker (512 per global step, as the shipped jobs). Each run is 2 epochs of
  ``--steps`` batches (``train.max_steps_per_epoch``); epoch 0 is warm-up and the rate is what ``train_worker``
  reports for epoch 1: all ranks' images over the epoch loop's time, start-up excluded.
* peer: torchvision ``transforms.v2`` on one image at a time (the preset's equivalent) in a DataLoader with 2
  workers over the train split in memory, the way torchvision-based SSL libraries load data.
* loader alone (ShardLoader epochs), augmentation alone (ViewAugmenter on in-memory uint8 batches), and each
  data path alone, no training: ours (ShardLoader epochs augmented by ViewAugmenter, in this process) and the
  peer's (epochs of its DataLoader). On 2 CPU cores the model takes most of every step, so the end-to-end ratio
  ours/peer cannot pass ceiling/peer; the data paths' ratio is what carries over to an accelerator, where the
  model's share shrinks.

Short runs overweight what every epoch pays once (starting its DataLoader workers: about 1 s here), so every
training variant then also runs one whole epoch of ``--rss-images`` images (the in-process ones in a fresh process
of their own), while a thread samples every 2 s the memory of its process and DataLoader workers (of each Ray
Train worker and its DataLoader worker): the process's RSS plus the workers' USS (``benchmarks.common.footprint``).

Torch threads: ``--cpus`` in this process (and the fresh ones), 1 in DataLoader workers (PyTorch's default there),
``train.cpus_per_worker`` in Ray Train workers (set by ``train_worker``). Prints the tables and the targets;
writes ``benchmarks/results/throughput-<methods>[-data-workers-N].json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from augment import ViewAugmenter
from benchmarks.common import (
    WARMUP_FRACTION,
    RssSampler,
    interleaved,
    local_ray,
    medians,
    print_table,
    timed,
    write_results,
)
from benchmarks.loader import stream_epoch
from pipeline.config import JobConfig, load_config, with_values
from pipeline.data import ShardLoader, open_source, read_manifest
from pipeline.errors import ConfigError
from pipeline.methods import METHODS, build_method
from pipeline.models import EncoderSpec, encoder_spec
from pipeline.optim import build_optimizer
from pipeline.train import fit, train_step
from pipeline.train.amp import autocast_wanted, precision_name

JOBS = Path(__file__).resolve().parent.parent / "jobs"
BATCH_SIZE = 256  # images per step per process (per Ray Train worker)
POOL_BATCHES = 40  # pre-augmented batches the ceiling cycles through
WARMUP_STEPS = 5
SAMPLE_EVERY_S = 2.0  # reading workers' USS (smaps) every 0.5 s cost plain training 4-6% of its speed here
PEER_WORKERS = 2
SCHEDULE_STEPS = 10_000  # the schedule length ``after_step`` sees: it sets BYOL's momentum, not the work
PEER_CROP_SCALE = {"simclr": (0.08, 1.0), "light": (0.5, 1.0)}  # presets for <= 32 px, 1 channel: jitter 0.4, 0.4
CEILING, PLAIN, RAY_1, RAY_2, PEER = "ceiling", "ours, plain", "ours, Ray 1x2 CPUs", "ours, Ray 2x1 CPU", "peer"
LOADER, AUGMENT = "loader alone", "augmentation alone"
OURS_DATA, PEER_DATA = "ours, data path alone", "peer, data path alone"
OURS = (PLAIN, RAY_1, RAY_2)
RAY_WORKERS = {RAY_1: 1, RAY_2: 2}
TARGETS = {
    "ours / ceiling": 0.9,
    "ours / peer": 2.0,
    "data path: ours / peer": 2.0,
    "Ray / plain": 0.95,
    "loader / training": 20.0,
}
MAX_WORKER_MIB, MAX_GROWTH = 2048, 0.05  # per training process: peak memory, growth after warm-up (fraction)


@dataclass
class Setup:
    config: JobConfig  # the method's job at BATCH_SIZE per step, absolute shard and storage paths
    spec: EncoderSpec
    images: torch.Tensor  # the train split in memory, uint8 (N, C, H, W)


def make_setup(method: str, shards: str, storage: str, data_workers: int | None = None) -> Setup:
    overrides = [
        f"data.shards={shards}",
        f"data.batch_size={BATCH_SIZE}",
        f"train.storage_path={storage}",
        *([f"data.num_workers={data_workers}"] if data_workers is not None else []),
    ]
    config = load_config(JOBS / f"{method}_fashion_mnist.yaml", overrides)
    manifest = read_manifest(shards)
    split = open_source(manifest.source["name"], download=False).splits["train"]
    images, _ = split.load(np.arange(split.num_samples))
    return Setup(
        config, encoder_spec(config.model, manifest), torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    )


class Trainee:
    """The job's method and optimizer in this process (no DDP), stepped by ``pipeline.train.train_step`` in the
    precision ``train.amp`` gives on this CPU."""

    def __init__(self, setup: Setup) -> None:
        torch.manual_seed(setup.config.train.seed)
        self.autocast = autocast_wanted(setup.config.train.amp, torch.device("cpu"))
        self.method = build_method(setup.config.method, setup.spec, setup.config.model).to(
            memory_format=torch.channels_last
        )
        self.optimizer = build_optimizer(self.method, setup.config.optim, BATCH_SIZE)
        self.steps = 0

    def step(self, views: Sequence[torch.Tensor]) -> int:
        """One training step; returns the number of images."""
        train_step(self.method, self.optimizer, views, self.autocast)
        self.steps += 1
        self.method.after_step(self.steps, SCHEDULE_STEPS)
        return len(views[0])


def augmenter(setup: Setup) -> ViewAugmenter:
    num_views = METHODS[setup.config.method.name].num_views
    return ViewAugmenter(
        setup.config.augment.preset,
        setup.spec.image_size,
        setup.spec.channels,
        num_views,
        seed=setup.config.train.seed,
        **setup.config.augment.view_options(),
    )


def shard_loader(setup: Setup) -> ShardLoader:
    config = setup.config
    return ShardLoader(
        config.data.shards,
        "train",
        BATCH_SIZE,
        rank=0,
        world_size=1,
        num_workers=config.data.num_workers,
        seed=config.train.seed,
    )


def ceiling(setup: Setup) -> Callable[[int], int]:
    """``run(steps) -> images``: the step on views augmented once, kept in memory and cycled."""
    trainee, augment = Trainee(setup), augmenter(setup)
    chosen = torch.randperm(len(setup.images))[: POOL_BATCHES * BATCH_SIZE]
    pool = [
        [v.contiguous(memory_format=torch.channels_last) for v in augment(batch)]
        for batch in setup.images[chosen].split(BATCH_SIZE)
    ]
    return lambda steps: sum(trainee.step(views) for views in itertools.islice(itertools.cycle(pool), steps))


def plain(setup: Setup) -> Callable[[int], int]:
    """``run(steps) -> images``: the next loader epoch's first ``steps`` batches, augmented and trained on."""
    trainee, augment, loader = Trainee(setup), augmenter(setup), shard_loader(setup)

    def run(steps: int) -> int:
        loader.set_epoch(loader.epoch + 1)
        return sum(trainee.step(augment(images)) for images, _, _ in itertools.islice(loader, steps))

    return run


def peer_transform(preset: str, spec: EncoderSpec) -> v2.Transform:
    """torchvision ``transforms.v2`` on one uint8 image, the equivalent of ``augment.presets`` for small
    grayscale images (what the Fashion-MNIST jobs use)."""
    to_float = v2.ToDtype(torch.float32, scale=True)
    if preset == "none":
        return to_float
    if preset not in PEER_CROP_SCALE or spec.channels != 1 or spec.image_size > 32:
        raise ConfigError(
            f"the peer mirrors the presets {', '.join(PEER_CROP_SCALE)} and none on small grayscale "
            f"images, not {preset!r} on {spec.channels}x{spec.image_size}x{spec.image_size}"
        )
    return v2.Compose(
        [
            v2.RandomResizedCrop(spec.image_size, scale=PEER_CROP_SCALE[preset], antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
            to_float,
        ]
    )


class PerImageViews(Dataset):
    """``num_views`` independently transformed views of one in-memory image per item."""

    def __init__(self, images: torch.Tensor, transform: v2.Transform, num_views: int) -> None:
        self.images, self.transform, self.num_views = images, transform, num_views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return [self.transform(self.images[index]) for _ in range(self.num_views)]


def peer_loader(setup: Setup) -> DataLoader:
    """Batches of per-image torchvision views, ``[(B, C, H, W)] * num_views``, from a DataLoader."""
    views = PerImageViews(
        setup.images,
        peer_transform(setup.config.augment.preset, setup.spec),
        METHODS[setup.config.method.name].num_views,
    )
    return DataLoader(views, BATCH_SIZE, shuffle=True, drop_last=True, num_workers=PEER_WORKERS)


def peer(setup: Setup) -> Callable[[int], int]:
    """``run(steps) -> images``: the step on the peer's batches."""
    trainee, loader = Trainee(setup), peer_loader(setup)
    return lambda steps: sum(trainee.step(batch) for batch in itertools.islice(loader, steps))


TRAINING = {CEILING: ceiling, PLAIN: plain, PEER: peer}  # the variants that train in this process


def augmentation_alone(setup: Setup, steps: int) -> Callable[[], int]:
    augment, batches = augmenter(setup), setup.images[: steps * BATCH_SIZE].split(BATCH_SIZE)
    return lambda: sum(len(augment(batch)[0]) for batch in batches)


def data_path_peer(setup: Setup) -> Callable[[], int]:
    """``run() -> images``: an epoch of the peer's DataLoader, no training."""
    loader = peer_loader(setup)
    return lambda: sum(len(views[0]) for views in loader)


def fit_on_ray(setup: Setup, workers: int, cpus: int, epochs: int, steps: int) -> float:
    """images/s that ``train_worker`` reports for the last of ``epochs`` epochs of at most ``steps`` batches per
    rank, on ``workers`` Ray Train workers sharing ``cpus`` CPUs."""
    values = {
        "train.num_workers": workers,
        "train.cpus_per_worker": cpus // workers,
        "train.epochs": epochs,
        "train.max_steps_per_epoch": steps,
    }
    state = fit(with_values(setup.config, values, "throughput"), f"throughput-{uuid.uuid4().hex[:8]}")
    return state["metrics"]["images_per_s"]


def ray_train_workers() -> dict[str, psutil.Process]:
    """This process's Ray Train workers, by pid (their forked DataLoader workers share the title: left out here,
    they are sampled as the workers' children)."""
    titled = {}
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if " ".join(process.cmdline()).startswith("ray::RayTrainWorker"):
                titled[process.pid] = process
    return {f"Ray Train worker, pid {pid}": p for pid, p in titled.items() if p.ppid() not in titled}


def _epoch_in_child(send: Connection, variant: str, method: str, args: argparse.Namespace, storage: str) -> None:
    torch.set_num_threads(args.cpus)
    run = TRAINING[variant](make_setup(method, args.shards, storage, args.data_workers))
    send.send(timed(lambda: run(args.rss_images // BATCH_SIZE))())


def epoch_in_child(variant: str, method: str, args: argparse.Namespace, storage: str) -> tuple[float, dict]:
    """``(images/s, RSS summary)`` of an epoch of ``args.rss_images`` of an in-process variant, in a fresh
    process."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_epoch_in_child, args=(send, variant, method, args, storage))
    child.start()
    send.close()
    root = psutil.Process(child.pid)
    with RssSampler(lambda: {"process + DataLoader workers": root}, SAMPLE_EVERY_S) as sampler:
        rate = receive.recv()
        child.join()
    return rate, sampler.summary()


def measure(method: str, args: argparse.Namespace, storage: str) -> dict:
    """Rates, whole-epoch rates and RSS of every variant for ``method``; prints its tables."""
    setup = make_setup(method, args.shards, storage, args.data_workers)
    training = {name: build(setup) for name, build in TRAINING.items()}
    alone = {
        LOADER: timed(partial(stream_epoch, shard_loader(setup))),
        AUGMENT: timed(augmentation_alone(setup, args.steps)),
        OURS_DATA: timed(partial(stream_epoch, shard_loader(setup), augmenter(setup))),
        PEER_DATA: timed(data_path_peer(setup)),
    }
    for run in training.values():  # warm-up; Ray runs warm up in their own epoch 0
        run(WARMUP_STEPS)
    for run in alone.values():
        run()
    variants = {name: timed(partial(run, args.steps)) for name, run in training.items()}
    variants |= {
        name: partial(fit_on_ray, setup, workers, args.cpus, 2, args.steps) for name, workers in RAY_WORKERS.items()
    }
    rates = interleaved(variants | alone, args.repeats, warmup=0)
    median = medians(rates)

    whole_epoch, rss = {}, {}
    if args.rss_images:
        for name in TRAINING:
            whole_epoch[name], rss[name] = epoch_in_child(name, method, args, storage)
        for name, workers in RAY_WORKERS.items():
            with RssSampler(ray_train_workers, SAMPLE_EVERY_S) as sampler:
                whole_epoch[name] = fit_on_ray(setup, workers, args.cpus, 1, args.rss_images // (BATCH_SIZE * workers))
            rss[name] = sampler.summary()

    print(
        f"\n{method}: images/s, median of {args.repeats} interleaved runs of {args.steps} steps "
        f"(whole epoch: one run of {args.rss_images:,} images, warm-up included)"
    )
    print_table(
        [
            {
                "variant": name,
                "images/s": rate,
                "/ ceiling": rate / median[CEILING],
                "/ peer": rate / median[PEER],
                "/ ours plain": rate / median[PLAIN],
                "whole epoch": whole_epoch.get(name),
            }
            for name, rate in median.items()
        ]
    )
    if rss:
        print(f"\n{method}: memory (MiB) over the whole epoch; after warm-up: from {WARMUP_FRACTION:.0%} of the way")
        print_table(
            [
                {"variant": name, "process": label, **summary}
                for name, processes in rss.items()
                for label, summary in processes.items()
            ]
        )
    checks = target_checks(median, {}, f"{args.steps} steps") + target_checks(whole_epoch, rss, "whole epoch")
    print_table(checks)
    return {
        "runs": rates,
        "median_images_per_s": median,
        "whole_epoch_images_per_s": whole_epoch,
        "rss_mib": rss,
        "targets": checks,
    }


def target_checks(rates: dict[str, float], rss: dict[str, dict[str, dict[str, float]]], runs: str) -> list[dict]:
    """``{"target", "value", "held"}`` for each target that ``rates`` (images/s of ``runs``) and ``rss`` allow."""
    checks = []

    def check(target: str, value: float, limit: float) -> None:
        held = value < limit if "<" in target else value >= limit
        checks.append({"target": f"{target} {limit:g}", "runs": runs, "value": value, "held": "yes" if held else "NO"})

    ours = [name for name in OURS if name in rates]
    for name in ours:
        check(f"{name} / {CEILING} >=", rates[name] / rates[CEILING], TARGETS["ours / ceiling"])
        check(f"{name} / {PEER} >=", rates[name] / rates[PEER], TARGETS["ours / peer"])
    for name in RAY_WORKERS:
        if name in rates:
            check(f"{name} / {PLAIN} >=", rates[name] / rates[PLAIN], TARGETS["Ray / plain"])
    if OURS_DATA in rates:
        check(f"{OURS_DATA} / {PEER_DATA} >=", rates[OURS_DATA] / rates[PEER_DATA], TARGETS["data path: ours / peer"])
    if LOADER in rates:
        check(
            f"{LOADER} / fastest ours >=",
            rates[LOADER] / max(rates[name] for name in ours),
            TARGETS["loader / training"],
        )
    for name in ours:
        for label, summary in rss.get(name, {}).items():
            check(f"{name}, {label}: peak MiB <", summary["peak"], MAX_WORKER_MIB)
            check(f"{name}, {label}: growth after warm-up <", summary["growth"] / summary["after_warmup"], MAX_GROWTH)
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", "--method", nargs="+", choices=("simclr", "byol", "vae"), default=["simclr"])
    parser.add_argument("--shards", default="data/fashion-mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="steps per measured run")
    parser.add_argument("--rss-images", type=int, default=60_000, help="images of the RSS epoch; 0 skips it")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for Ray and torch threads in this process")
    parser.add_argument(
        "--data-workers", type=int, help="DataLoader workers per process (default: the job's data.num_workers)"
    )
    args = parser.parse_args(argv)
    args.shards = str(Path(args.shards).absolute())  # Ray Train workers run in another directory
    torch.set_num_threads(args.cpus)

    results = {}
    with tempfile.TemporaryDirectory(prefix="throughput-") as storage, local_ray(args.cpus):
        for method in args.methods:
            results[method] = measure(method, args, storage)
    settings = {
        "batch_size_per_process": BATCH_SIZE,
        "steps": args.steps,
        "repeats": args.repeats,
        "rss_images": args.rss_images,
        "cpus": args.cpus,
        "pool_batches": POOL_BATCHES,
        "precision": f"{precision_name(autocast_wanted('auto', torch.device('cpu')))} (the jobs' train.amp: auto)",
        "peer_dataloader_workers": PEER_WORKERS,
        "data_workers": "the job's data.num_workers" if args.data_workers is None else args.data_workers,
        "torch_threads": {
            "this process and the fresh ones": args.cpus,
            "DataLoader workers": 1,
            "Ray Train workers": "train.cpus_per_worker: 2 (1 worker), 1 (2 workers)",
        },
    }
    name = "-".join(
        ["throughput", *args.methods, *([f"data-workers-{args.data_workers}"] if args.data_workers is not None else [])]
    )
    write_results(name, {"settings": settings, "methods": results})


if __name__ == "__main__":
    main()
