"""Loader benchmark: samples/s of the shard stream (tar read + decode + shuffle + batching) against reading the
same uint8 images from an in-memory array, interleaved in one run.

    python -m benchmarks.loader [--source fashion-mnist] [--repeats 3] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import interleaved, report, timed
from pipeline.data import ShardLoader, open_source, write_shards


def _memory_epoch(images: torch.Tensor, batch_size: int) -> int:
    """The in-memory baseline: a shuffled epoch of index-gathered uint8 batches."""
    order = torch.randperm(len(images))
    count = 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        count += len(images[order[start : start + batch_size]])
    return count


def stream_epoch(loader: ShardLoader, consume: Callable[[torch.Tensor], object] | None = None) -> int:
    """One epoch of ``loader`` (the next one), each uint8 ``(B, C, H, W)`` batch passed to ``consume`` if given:
    the number of samples read."""
    loader.set_epoch(loader.epoch + 1)
    count = 0
    for images, _, _ in loader:
        if consume is not None:
            consume(images)
        count += len(images)
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="fashion-mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    source = open_source(args.source)
    train = source.splits["train"]
    images_hwc, _ = train.load(np.arange(train.num_samples))
    in_memory = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous()
    with tempfile.TemporaryDirectory() as work:
        layouts = {
            "chunked png": dict(),
            "chunked npy": dict(encoding="npy"),
            "per-image png": dict(images_per_member=1),
        }
        for name, options in layouts.items():
            print(f"sharding {args.source} as {name} ...")
            write_shards(source, Path(work, name), progress=False, **options)

        def stream(layout: str, workers: int) -> ShardLoader:
            return ShardLoader(Path(work, layout), "train", args.batch_size, rank=0, world_size=1, num_workers=workers)

        variants = {"in-memory uint8 array": timed(lambda: _memory_epoch(in_memory, args.batch_size))}
        for layout in layouts:
            for workers in (0, 2):
                loader = stream(layout, workers)
                variants[f"stream {layout}, {workers} workers"] = timed(lambda loader=loader: stream_epoch(loader))
        rates = interleaved(variants, args.repeats)
    report(
        "loader", rates, baseline="in-memory uint8 array", extra={"source": args.source, "batch_size": args.batch_size}
    )


if __name__ == "__main__":
    main()
