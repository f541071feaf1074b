"""A real third-party peer side by side: our plain SimCLR loop against the ``lightly`` library (1.6, MIT) at equal
wall-clock training budgets, in one process, on the same images, model, batch, optimizer and initial weights.

    python -m benchmarks.lightly_peer [section.key=value ...] [--minutes 5 10] [--seeds 0 1 2] [--slice-seconds 30]
                                      [--warmup-fraction 0.1] [--shards data/fashion-mnist] [--probe-max-iter N]
                                      [--lightly-channels-last] [--add]

(the overrides first: ``--minutes`` and ``--seeds`` take every number that follows them.) ``--add`` keeps the
results file's runs of other seeds (same settings and machine kind) and summarises them all, so seeds can be run apart.

Both sides train ``jobs/simclr_fashion_mnist.yaml``'s SimCLR (small CNN, projection head, temperature, AdamW and
its LR per 256 images, augmentation strengths) on batches of 256 in this process, in one precision: the job's
``train.amp`` on this CPU (``auto``: bf16 autocast where the CPU has bf16 instructions; ``train.amp=false`` for
float32 on both sides):

* ours: the plain loop of ``benchmarks.throughput`` (its ``Trainee``, ``augmenter`` and ``shard_loader``):
  ShardLoader epochs (the job's ``data.num_workers``: 0, read in this process), batched Kornia ``simclr`` views,
  ``pipeline.train.train_step``.
* lightly, used the way its docs teach: ``lightly.transforms.SimCLRTransform`` on one PIL image at a time in a torch
  DataLoader (2 workers, shuffled, drop_last) over the train split read once from the shards into memory (uint8,
  a PIL image made per item as torchvision's ``FashionMNIST`` does), ``lightly.loss.NTXentLoss``, and a model of
  backbone + projection head that are our small CNN and head, loaded with our side's initial ``state_dict``.
  ``SimCLRTransform`` is sized to our preset for <= 32 px, 1 channel (:func:`lightly_transform`). In bf16 its
  forward pass and loss run under ``torch.autocast("cpu", torch.bfloat16)``, as Lightning's ``precision="bf16-mixed"``
  runs a ``training_step`` (ours computes its loss in float32 under autocast, ``pipeline.losses``).

Equal wall clock: the two trainers alternate in slices of ``--slice-seconds`` of their own clock (which side goes
first alternates with the seed), so machine load falls on both alike; each clock counts only its own loop (fetching
the next batch, augmenting, the step). While ours runs, lightly's paused DataLoader workers fill their prefetch
queue (2 workers x 2 batches), work done outside lightly's clock: about 1,000 images' views, under 1% of the CPU
time of a 30 s slice (a per-image data path like it makes about 4,600 images/s here, ``benchmarks.throughput``).
Each clock includes its side's start-up (its first batch and step: our
first shard reads and Kornia's first call; lightly's DataLoader workers starting, which it pays again every epoch),
recorded as ``first_step_s``. When a side's clock first reaches a budget of ``--minutes``, its model is
snapshotted (at most one step past the budget; the JSON records each side's exact training minutes).

LR schedule (both sides identical, as a function of each side's own training clock): the job's base LR, linear
warm-up over the first ``--warmup-fraction`` of the largest budget, then half a cosine to 0 at the largest budget
(``pipeline.schedules.warmup_cosine`` of the clock in milliseconds). Keyed on time, not steps, so no calibration is
needed and each side gets the whole schedule within the budget whatever its rate; the smaller budgets' snapshots
are taken mid-schedule, as in ``benchmarks.time_to_accuracy``.

After training, every snapshot is probed as ``benchmarks.time_to_accuracy`` does: features of the frozen encoder
(``extract_features``) of train and test, ``linear_probe`` train -> test. Each of ``--seeds`` repeats the whole
comparison. Prints, per budget, the mean over seeds (and min-max) of images/s, epochs seen and probe accuracy per
side, images/s ours / lightly and the accuracy difference ours - lightly in points; writes
``benchmarks/results/lightly_peer[-<overrides>].json`` (machine, date, command, settings, every seed's numbers).

Smoke check: ``--minutes 0.25 0.5 --seeds 0 --slice-seconds 5`` (1 minute of training, then four probes of
60,000 + 10,000 images: 37 min on 2 cores under a load of 9, 2026-11-30). The full run trains 20 minutes per seed and
probes 4 snapshots per seed: 68 min for 3 seeds on a quiet machine (2026-12-01).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from augment.presets import jitter_strength_for
from benchmarks.common import command_line, machine_info, print_table, results_name, results_to_extend, write_results
from benchmarks.throughput import BATCH_SIZE, JOBS, Setup, Trainee, augmenter, shard_loader
from pipeline.config import JobConfig, load_config
from pipeline.data import LabeledShards, evaluation_loader, read_manifest
from pipeline.errors import ConfigError
from pipeline.evaluate.features import extract_features
from pipeline.evaluate.probe import linear_probe
from pipeline.methods import build_method, trained_method
from pipeline.models import encoder_spec
from pipeline.optim import build_optimizer
from pipeline.schedules import warmup_cosine
from pipeline.sections import AugmentConfig
from pipeline.train.amp import autocast_wanted, precision_name

JOB = JOBS / "simclr_fashion_mnist.yaml"
LIGHTLY_WORKERS = 2
CPUS = 2
OURS, LIGHTLY = "ours", "lightly"
State = dict[str, torch.Tensor]


def lightly_transform(image_size: int, channels: int, augment: AugmentConfig | None = None):
    """``SimCLRTransform`` matched to our ``simclr`` preset for small grayscale images (``augment.presets``) at
    ``augment``'s strengths (default: the preset's): crop scale ``augment.crop_scale`` (``min_scale``; ratio
    3/4-4/3 in both), flip p=0.5, colour jitter p=0.8 of our strength s (unset: 0.5, the CIFAR
    setting, ours for <= 32 px): brightness and contrast 0.8 s, saturation and hue 0 (ours drops them on 1 channel;
    on 'L' images torchvision would skip them anyway), no grayscale and no blur (ours blurs from 64 px), no rotation
    or vertical flip, and no normalisation: views stay in [0, 1] like ours, the shared encoder normalises with the
    data set's mean/std itself."""
    from lightly.transforms import SimCLRTransform

    if channels != 1 or image_size > 32:
        raise ConfigError(
            f"the lightly peer mirrors the simclr preset on small grayscale images (1 channel, at most "
            f"32 px), not {channels}x{image_size}x{image_size}: use Fashion-MNIST-like shards"
        )
    augment = augment or AugmentConfig()
    strength = jitter_strength_for(image_size, augment.jitter_strength)
    return SimCLRTransform(
        input_size=image_size,
        cj_prob=0.8,
        cj_strength=strength,
        cj_bright=0.8,
        cj_contrast=0.8,
        cj_sat=0.0,
        cj_hue=0.0,
        min_scale=augment.crop_scale[0],
        random_gray_scale=0.0,
        gaussian_blur=0.0,
        hf_prob=0.5,
        vf_prob=0.0,
        rr_prob=0.0,
        normalize=None,
    )


class InMemoryImages(Dataset):
    """``(views, label)`` per item: ``transform`` of a PIL 'L' image made from ``images[i]`` (uint8 ``(N, H, W)``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class LightlySimCLR(nn.Module):
    """The model of lightly's SimCLR example: ``projection_head(backbone(x))``, here our encoder and head (named as
    in our method, so our ``state_dict`` loads as it is)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder, self.projector = encoder, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


@dataclass
class Side:
    """One trainer: ``batches`` yields what ``step`` takes; ``model.state_dict()`` has our method's keys."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Iterator
    step: Callable[[object], None]
    autocast: bool  # forward pass and loss under bf16 autocast
    trained_s: float = 0.0
    images: int = 0
    first_step_s: float | None = None  # start-up included: the first batch (loader, workers) and step
    snapshots: dict[float, dict] = field(default_factory=dict)  # budget s -> {"state", "trained_s", "images"}


def read_train_split(shards: str) -> tuple[np.ndarray, np.ndarray]:
    """The train split of ``shards`` in sample order: images uint8 ``(N, H, W)`` (1 channel), labels ``(N,)``."""
    parts = list(evaluation_loader(shards, "train", 1024, num_workers=0))
    images, labels, indices = (torch.cat([p[i] for p in parts]) for i in range(3))
    order = torch.argsort(indices)
    return images[order, 0].numpy(), labels[order].numpy()


def forever(batches: Callable[[int], Iterator]) -> Iterator:
    """``batches(epoch)``'s items for epoch 0, 1, 2, ..."""
    return itertools.chain.from_iterable(batches(epoch) for epoch in itertools.count())


def ours(setup: Setup) -> Side:
    """Our plain loop (``benchmarks.throughput``): ShardLoader epochs, batched Kornia views, ``train_step``."""
    trainee, augment, loader = Trainee(setup), augmenter(setup), shard_loader(setup)

    def epoch(number: int) -> Iterator[list[torch.Tensor]]:
        loader.set_epoch(number)
        return (augment(images) for images, _, _ in loader)

    return Side(OURS, trainee.method, trainee.optimizer, forever(epoch), trainee.step, trainee.autocast)


def lightly(
    setup: Setup, initial: State, train: tuple[np.ndarray, np.ndarray], seed: int, channels_last: bool, autocast: bool
) -> Side:
    """lightly's SimCLR recipe on our encoder and head, starting from ``initial``, its forward pass and loss under
    bf16 autocast with ``autocast`` (Lightning's ``bf16-mixed``)."""
    from lightly.loss import NTXentLoss

    method = build_method(setup.config.method, setup.spec, setup.config.model)
    model = LightlySimCLR(method.encoder, method.projector)
    model.load_state_dict(initial)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, setup.config.optim, BATCH_SIZE)
    criterion = NTXentLoss(temperature=setup.config.method.temperature)
    transform = lightly_transform(setup.spec.image_size, setup.spec.channels, setup.config.augment)
    dataset = InMemoryImages(*train, transform)
    loader = DataLoader(
        dataset,
        BATCH_SIZE,
        shuffle=True,
        drop_last=True,
        num_workers=LIGHTLY_WORKERS,
        generator=torch.Generator().manual_seed(seed),
    )

    def step(batch: tuple[list[torch.Tensor], torch.Tensor]) -> None:
        x0, x1 = batch[0]
        if channels_last:
            x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = criterion(model(x0), model(x1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return Side(LIGHTLY, model, optimizer, forever(lambda _: iter(loader)), step, autocast)


def lr_factor(trained_s: float, total_s: float, warmup_fraction: float) -> float:
    """Multiplier of the base LR after ``trained_s`` seconds of a side's training: warm-up over
    ``warmup_fraction * total_s``, then a cosine to 0 at ``total_s`` (milliseconds as steps)."""
    total_ms = max(1, round(1000 * total_s))
    return warmup_cosine(round(1000 * trained_s), total_ms, max(1, round(warmup_fraction * total_ms)))


def train_slice(side: Side, until_s: float, budgets_s: Sequence[float], warmup_fraction: float) -> None:
    """Steps ``side`` until its clock reaches ``until_s``, snapshotting its model at each budget it passes."""
    for group in side.optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    while side.trained_s < until_s:
        start = time.perf_counter()
        batch = next(side.batches)
        factor = lr_factor(side.trained_s, budgets_s[-1], warmup_fraction)
        for group in side.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        side.step(batch)
        side.trained_s += time.perf_counter() - start
        side.first_step_s = side.first_step_s or side.trained_s
        side.images += BATCH_SIZE
        for budget in budgets_s:
            if budget not in side.snapshots and side.trained_s >= budget:
                state = {k: v.detach().clone() for k, v in side.model.state_dict().items()}
                side.snapshots[budget] = {"state": state, "trained_s": side.trained_s, "images": side.images}


def interleave(sides: Sequence[Side], budgets_s: Sequence[float], slice_s: float, warmup_fraction: float) -> None:
    """Slices of ``slice_s`` of each side's own clock, in turn, until every side has trained the largest budget."""
    for end in itertools.count(1):
        if all(side.trained_s >= budgets_s[-1] for side in sides):
            return
        for side in sides:
            train_slice(side, min(end * slice_s, budgets_s[-1]), budgets_s, warmup_fraction)


def distance(a: State, b: State) -> float:
    """L2 distance between the floating-point tensors of two state dicts."""
    return math.sqrt(sum(float((a[k].double() - b[k].double()).square().sum()) for k in a if a[k].is_floating_point()))


def probe_accuracy(setup: Setup, state: State, max_iter: int) -> float:
    """As ``benchmarks.time_to_accuracy``: frozen encoder features of train and test, linear probe train -> test."""
    config = setup.config
    encoder = trained_method(config.method, config.model, read_manifest(config.data.shards), {"model": state}).encoder
    shards = LabeledShards(config.data.shards, config.eval.batch_size)
    train_x, train_y = extract_features(encoder, shards, "train")
    test_x, test_y = extract_features(encoder, shards, "test")
    return linear_probe(train_x, train_y, test_x, test_y, max_iter).accuracy


def compare(setup: Setup, train: tuple[np.ndarray, np.ndarray], seed: int, args: argparse.Namespace) -> dict:
    """One seed: both sides from the same initial weights, interleaved to the largest budget, every snapshot probed."""
    budgets_s = sorted(60 * m for m in args.minutes)
    mine = ours(setup)
    initial = {k: v.detach().clone() for k, v in mine.model.state_dict().items()}
    theirs = lightly(setup, initial, train, seed, args.lightly_channels_last, mine.autocast)
    same_start = all(torch.equal(initial[k], v) for k, v in theirs.model.state_dict().items())
    sides = [mine, theirs] if seed % 2 == 0 else [theirs, mine]
    started = time.perf_counter()
    interleave(sides, budgets_s, args.slice_seconds, args.warmup_fraction)
    wall_s = time.perf_counter() - started
    for side in sides:
        side.batches = iter(())  # lets lightly's DataLoader workers go before probing
    max_iter = args.probe_max_iter or setup.config.eval.probe_max_iter
    result = {
        "seed": seed,
        "precision": precision_name(mine.autocast),
        "initial_weights_equal": same_start,
        "first": sides[0].name,
        "wall_s": wall_s,
        "sides": {},
    }
    result["first_step_s"] = {side.name: side.first_step_s for side in (mine, theirs)}
    for side in (mine, theirs):
        result["sides"][side.name] = [
            {
                "budget_min": budget / 60,
                "trained_min": snap["trained_s"] / 60,
                "images": snap["images"],
                "images_per_s": snap["images"] / snap["trained_s"],
                "epochs": snap["images"] / len(train[0]),
                "distance_from_initial": distance(snap["state"], initial),
                "probe_accuracy": probe_accuracy(setup, snap["state"], max_iter),
            }
            for budget, snap in sorted(side.snapshots.items())
        ]
        print(
            f"seed {seed}, {side.name}: "
            + "; ".join(
                f"{r['budget_min']:g} min: {r['images_per_s']:.0f} img/s, {r['epochs']:.2f} epochs, probe "
                f"{r['probe_accuracy']:.4f}"
                for r in result["sides"][side.name]
            ),
            flush=True,
        )
    return result


def spread(values: Sequence[float], digits: int) -> str:
    """``mean`` of one value, ``mean (min-max)`` of several, to ``digits`` decimals."""
    mean = f"{statistics.fmean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summary(runs: Sequence[dict], budgets_min: Sequence[float]) -> list[dict]:
    """One row per budget: mean over seeds (min-max) of each side's images/s, epochs and probe accuracy, the
    per-seed ratio ours / lightly of images/s and difference ours - lightly of accuracy in points."""
    rows = []
    for i, budget in enumerate(sorted(budgets_min)):
        at = {
            (name, key): [run["sides"][name][i][key] for run in runs]
            for name in (OURS, LIGHTLY)
            for key in ("images_per_s", "epochs", "probe_accuracy")
        }
        rates, accuracies = (
            zip(at[OURS, key], at[LIGHTLY, key], strict=True) for key in ("images_per_s", "probe_accuracy")
        )
        rows.append(
            {
                "budget min": f"{budget:g}",
                "ours img/s": spread(at[OURS, "images_per_s"], 0),
                "lightly img/s": spread(at[LIGHTLY, "images_per_s"], 0),
                "img/s ours/lightly": spread([a / b for a, b in rates], 2),
                "ours epochs": spread(at[OURS, "epochs"], 2),
                "lightly epochs": spread(at[LIGHTLY, "epochs"], 2),
                "ours probe": spread(at[OURS, "probe_accuracy"], 4),
                "lightly probe": spread(at[LIGHTLY, "probe_accuracy"], 4),
                "ours - lightly, points": spread([100 * (a - b) for a, b in accuracies], 2),
            }
        )
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", nargs="+", type=float, default=[5.0, 10.0], help="training budgets per side")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shards", default="data/fashion-mnist")
    parser.add_argument("--slice-seconds", type=float, default=30.0, help="training seconds per turn of a side")
    parser.add_argument("--warmup-fraction", type=float, default=0.1, help="LR warm-up, of the largest budget")
    parser.add_argument("--probe-max-iter", type=int, help="probe iterations (default: the job's eval.probe_max_iter)")
    parser.add_argument(
        "--lightly-channels-last",
        action="store_true",
        help="lightly's model and batches in channels_last, as ours (its docs do not)",
    )
    parser.add_argument("--add", action="store_true", help="keep the results file's runs of other seeds")
    parser.add_argument("overrides", nargs="*", help="section.key=value changes to the job (both sides)")
    args = parser.parse_args(argv)
    if min(args.minutes) <= 0 or args.slice_seconds <= 0 or not 0 <= args.warmup_fraction < 1:
        parser.error("--minutes and --slice-seconds must be > 0, --warmup-fraction in [0, 1)")
    return args


def job_config(args: argparse.Namespace, seed: int) -> JobConfig:
    overrides = [f"data.shards={args.shards}", f"data.batch_size={BATCH_SIZE}", f"train.seed={seed}"]
    return load_config(JOB, [*args.overrides, *overrides])


def settings_of(args: argparse.Namespace, config: JobConfig, lightly_version: str) -> dict:
    """What a results file's runs share (seeds aside)."""
    return {
        "job": str(JOB.relative_to(JOBS.parent)),
        "overrides": args.overrides,
        "shards": args.shards,
        "batch_size": BATCH_SIZE,
        "lightly": lightly_version,
        "lightly_dataloader_workers": LIGHTLY_WORKERS,
        "lightly_channels_last": args.lightly_channels_last,
        "precision": precision_name(autocast_wanted(config.train.amp, torch.device("cpu"))),
        "torch_threads": CPUS,
        "slice_seconds": args.slice_seconds,
        "budgets_min": sorted(args.minutes),
        "lr_schedule": f"base LR, warm-up over {args.warmup_fraction:g} of the largest budget, cosine to 0 at it; "
        f"a function of each side's own training seconds",
        "probe_max_iter": args.probe_max_iter or config.eval.probe_max_iter,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(CPUS)
    import lightly as lightly_library

    command, name = command_line("benchmarks.lightly_peer", argv), results_name("lightly_peer", args.overrides)
    settings = settings_of(args, job_config(args, args.seeds[0]), lightly_library.__version__)
    earlier = results_to_extend(name, {"settings": settings}, ignore={"seeds"})["runs"] if args.add else []
    runs = [run for run in earlier if run["seed"] not in args.seeds]
    for seed in args.seeds:
        config = job_config(args, seed)
        manifest = read_manifest(config.data.shards)
        train = read_train_split(config.data.shards)
        setup = Setup(config, encoder_spec(config.model, manifest), torch.from_numpy(train[0]).unsqueeze(1))
        runs.append(compare(setup, train, seed, args) | {"date": machine_info()["date"], "command": command})
    runs.sort(key=lambda run: run["seed"])
    rows = summary(runs, args.minutes)
    seeds = [run["seed"] for run in runs]
    print(
        f"\nSimCLR, ours (plain loop) vs lightly {lightly_library.__version__}, equal training minutes per side, "
        f"{settings['precision']}; mean (min-max) over seeds {' '.join(map(str, seeds))}"
    )
    print_table(rows)
    payload = {"command": command, "settings": settings | {"seeds": seeds}, "summary": rows, "runs": runs}
    write_results(name, payload)
    return payload


if __name__ == "__main__":
    main()
