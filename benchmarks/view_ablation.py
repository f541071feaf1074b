"""Do our views teach less per step than lightly's? SimCLR trained for the same number of steps on the same
batches, from the same initial weights, with the view pipeline (or one part of it) swapped per arm, each arm an
MLflow run (experiment ``view-ablation``; the store is the job's: ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``).

    python -m benchmarks.view_ablation [--arms ours lightly ...] [--steps 300] [--seeds 0 1] [--shards ...]
                                       [--probe-max-iter N] [section.key=value ...]

Every arm trains ``jobs/simclr_fashion_mnist.yaml``'s model and loss as ``benchmarks.lightly_peer`` does (batches of
256 from our ShardLoader in the same order, ``pipeline.train.train_step``, AdamW, warm-up over 10% of the steps then
a cosine to 0, keyed on steps), with the job changed by the ``section.key=value`` overrides, and probes the encoder
as it does. Only the views differ (each arm at the preset's own strengths, whatever the job's ``augment`` says):

* ``ours``: :class:`augment.presets.ViewAugmenter` (``simclr`` preset: crops resampled by one batched
  ``grid_sample``, flips, brightness and contrast in each image's own order).
* ``lightly``: ``lightly.transforms.SimCLRTransform`` (``benchmarks.lightly_peer.lightly_transform``) on one PIL
  image at a time: torchvision's crop of an integer box resized by PIL, jitter order drawn per image.
* ``tv-crop``: torchvision's crop and flip per PIL image, then Kornia's batched jitter: isolates the crop.
* ``slice-crop``: Kornia's per-image crop-and-resize (``cropping_mode="slice"``), flip and jitter.
* ``light``: our ``light`` preset (crop 0.5-1): whether weaker crops teach more per step at this budget.

Prints arm -> probe accuracy per seed and mean; writes ``benchmarks/results/view_ablation.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import kornia.augmentation as K
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torch import nn

from augment.presets import ViewAugmenter
from benchmarks.common import command_line, print_table, write_results
from benchmarks.lightly_peer import JOB, lightly_transform, probe_accuracy, read_train_split
from benchmarks.throughput import BATCH_SIZE, Setup, Trainee, shard_loader
from pipeline.config import dump_config, load_config
from pipeline.data import read_manifest
from pipeline.models import encoder_spec
from pipeline.schedules import warmup_cosine
from pipeline.track import Tracker

CPUS = 2
EXPERIMENT = "view-ablation"
ARMS = ("ours", "lightly", "tv-crop", "slice-crop", "light")
Views = Callable[[torch.Tensor], list[torch.Tensor]]


def per_image(transform: Callable[[Image.Image], list[torch.Tensor]]) -> Views:
    """Views of a uint8 ``(B, 1, H, W)`` batch made one PIL image at a time by ``transform`` (-> two views)."""

    def views(batch: torch.Tensor) -> list[torch.Tensor]:
        pairs = [transform(Image.fromarray(image[0].numpy())) for image in batch]
        return [torch.stack([pair[v] for pair in pairs]) for v in range(2)]

    return views


def arm_views(arm: str, setup: Setup, seed: int) -> Views:
    """``views(batch)``: uint8 ``(B, C, H, W)`` -> two float ``(B, C, H, W)`` views in [0, 1], made as ``arm`` says."""
    size, channels = setup.spec.image_size, setup.spec.channels
    if arm == "ours":
        return ViewAugmenter("simclr", size, channels, 2, seed=seed)
    if arm == "light":
        return ViewAugmenter("light", size, channels, 2, seed=seed)
    if arm == "lightly":
        return per_image(lightly_transform(size, channels))
    jitter = K.ColorJitter(0.4, 0.4, 0.0, 0.0, p=0.8)
    if arm == "slice-crop":
        pipe = nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(0.08, 1.0), cropping_mode="slice"),
            K.RandomHorizontalFlip(),
            jitter,
        )
        return lambda batch: [pipe(batch.float() / 255).clamp(0, 1) for _ in range(2)]
    if arm == "tv-crop":
        crop = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.PILToTensor()])
        cropped = per_image(lambda image: [crop(image), crop(image)])
        return lambda batch: [jitter(v.float() / 255).clamp(0, 1) for v in cropped(batch)]
    raise SystemExit(f"unknown arm {arm!r}: choose from {', '.join(ARMS)}")


def train_arm(setup: Setup, arm: str, seed: int, steps: int, probe_max_iter: int) -> dict:
    """``steps`` steps of SimCLR on ``arm``'s views of our loader's batches; the probe of the result."""
    torch.manual_seed(seed)
    trainee, loader, views = Trainee(setup), shard_loader(setup), arm_views(arm, setup, seed)
    for group in trainee.optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    done, epoch, view_s, started = 0, 0, 0.0, time.perf_counter()
    while done < steps:
        loader.set_epoch(epoch)
        for images, _, _ in loader:
            if done == steps:
                break
            for group in trainee.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * warmup_cosine(done, steps, max(1, steps // 10))
            start = time.perf_counter()
            pair = views(images)
            view_s += time.perf_counter() - start
            trainee.step(pair)
            done += 1
        epoch += 1
    train_s = time.perf_counter() - started
    state = {k: v.detach().clone() for k, v in trainee.method.state_dict().items()}
    accuracy = probe_accuracy(setup, state, probe_max_iter)
    return {"arm": arm, "seed": seed, "steps": steps, "probe_accuracy": accuracy, "train_s": train_s, "view_s": view_s}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS[:4]))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--shards", default="data/fashion-mnist")
    parser.add_argument("--probe-max-iter", type=int, help="probe iterations (default: the job's eval.probe_max_iter)")
    parser.add_argument("overrides", nargs="*", help="section.key=value changes to the job")
    args = parser.parse_args(argv)
    torch.set_num_threads(CPUS)
    command = command_line("benchmarks.view_ablation", argv)
    results = []
    for seed in args.seeds:
        config = load_config(
            JOB, [*args.overrides, f"data.shards={args.shards}", f"data.batch_size={BATCH_SIZE}", f"train.seed={seed}"]
        )
        train = read_train_split(config.data.shards)
        setup = Setup(
            config,
            encoder_spec(config.model, read_manifest(config.data.shards)),
            torch.from_numpy(train[0]).unsqueeze(1),
        )
        tracker = Tracker(config.track.store())
        for arm in args.arms:
            params = {"arm": arm, "seed": seed, "steps": args.steps, "batch_size": BATCH_SIZE, "command": command}
            run_id = tracker.start(
                EXPERIMENT,
                f"{arm} seed {seed} {args.steps} steps",
                params,
                dump_config(config),
                entry_point="benchmarks.view_ablation",
            )
            result = train_arm(setup, arm, seed, args.steps, args.probe_max_iter or config.eval.probe_max_iter)
            tracker.log_metrics(run_id, {k: result[k] for k in ("probe_accuracy", "train_s", "view_s")})
            tracker.finish(run_id)
            results.append(result)
            print(
                f"seed {seed}, {arm}: probe {result['probe_accuracy']:.4f} ({result['train_s']:.0f} s training, "
                f"{result['view_s']:.0f} s views)",
                flush=True,
            )
    rows = []
    for arm in args.arms:
        accuracies = [r["probe_accuracy"] for r in results if r["arm"] == arm]
        rows.append(
            {
                "arm": arm,
                **{f"seed {s}": f"{a:.4f}" for s, a in zip(args.seeds, accuracies, strict=True)},
                "mean": f"{statistics.fmean(accuracies):.4f}",
            }
        )
    print(f"\nSimCLR, {args.steps} steps of {BATCH_SIZE}, views swapped per arm; linear probe on Fashion-MNIST test")
    print_table(rows)
    payload = {"command": command, "summary": rows, "runs": results}
    write_results("view_ablation", payload)
    return payload


if __name__ == "__main__":
    main()
