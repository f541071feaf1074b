"""Photo benchmark: shard size and sharding rate, decoders per core, and the CPU data path (read shards, decode,
random-resized-crop to 224, two SimCLR views) beside the peer users would otherwise run, torchvision
``ImageFolder`` over the same JPEG files with per-sample ``transforms.v2`` in a DataLoader. Both data paths use
the same number of loader processes; repeats are interleaved. On a CUDA device it also measures decode + augment
alone on the GPU.

    python -m benchmarks.photos [--per-class 40] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.io as tio
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from augment import ViewAugmenter
from augment.blur import RandomGaussianBlur
from benchmarks.common import interleaved, medians, print_table, timed, write_results
from benchmarks.photo_folder import make_photo_folder
from pipeline.data import ShardLoader
from pipeline.data.decode import PhotoViews, every_photo, photo_views, random_boxes
from pipeline.data.photo_shards import write_photo_shards
from pipeline.data.photos import photo_files

SIZE = 224
BATCH = 64
PEER = "ImageFolder + transforms.v2"
VIEWS = "crop, flip, jitter, grayscale"
VIEWS_BLUR = "SimCLR views (+ blur)"


def peer_transform(blur: bool) -> v2.Transform:
    """SimCLR's ImageNet views in torchvision ``transforms.v2``, one PIL image at a time (``blur``: with the
    Gaussian blur of half the views, 23 px kernel, sigma 0.1-2, as our ``simclr`` preset)."""
    blurs = [v2.RandomApply([v2.GaussianBlur(23, (0.1, 2.0))], p=0.5)] if blur else []
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(SIZE, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            *blurs,
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


class TwoViews:
    def __init__(self, transform: v2.Transform) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [self.transform(image), self.transform(image)]


def peer_epoch(folder: Path, workers: int, blur: bool) -> Callable[[], int]:
    """One epoch of ``ImageFolder`` + per-sample views in a DataLoader of ``workers`` processes."""
    loader = DataLoader(
        datasets.ImageFolder(str(folder), transform=TwoViews(peer_transform(blur))),
        BATCH,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
    )
    return lambda: sum(len(labels) for _, labels in loader)


def ours_epoch(shards: Path, workers: int, blur: bool) -> Callable[[], int]:
    """One epoch of our CPU photo path, as CPU training runs it: shards -> decode, 2 random-resized crops and the
    ``simclr`` preset (flip, jitter, grayscale and, with ``blur``, blur) in ``workers`` loader processes."""
    augmenter = ViewAugmenter("simclr", SIZE, 3, 2, crop=False)
    if not blur:
        augmenter.pipelines = nn.ModuleList(
            nn.Sequential(*(op for op in view if not isinstance(op, RandomGaussianBlur)))
            for view in augmenter.pipelines
        )
    loader = ShardLoader(
        shards,
        "train",
        BATCH,
        rank=0,
        world_size=1,
        num_workers=workers,
        views=PhotoViews(SIZE, 2, random=True),
        transform=augmenter.stacked,
    )

    def run() -> int:
        loader.set_epoch(loader.epoch + 1)
        return sum(len(labels) for _, labels, _ in loader)

    return run


def decoder_rates(files: list[Path], repeats: int) -> dict[str, float]:
    """Photos/s on one core: decode alone, and decode + two random-resized crops to 224, per decoder."""
    torch.set_num_threads(1)
    blobs = [f.read_bytes() for f in files]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    rng = np.random.default_rng(0)

    def pil_decode() -> int:
        for blob in blobs:
            Image.open(io.BytesIO(blob)).convert("RGB").load()
        return len(blobs)

    def pil_crops() -> int:  # draft (DCT-scaled) decoding where the crop allows, then PIL's resize of each box
        for blob in blobs:
            image = Image.open(io.BytesIO(blob))
            width, height = image.size
            boxes = random_boxes(np.array([[height, width]] * 2), rng)
            smallest = boxes[:, 2:].min()
            image.draft("RGB", (max(SIZE, width * SIZE // smallest), max(SIZE, height * SIZE // smallest)))
            scale = image.size[0] / width
            image = image.convert("RGB")
            for top, left, h, w in boxes.tolist():
                image.resize(
                    (SIZE, SIZE),
                    Image.Resampling.BILINEAR,
                    box=(left * scale, top * scale, (left + w) * scale, (top + h) * scale),
                )
        return len(blobs)

    def torchvision_decode() -> int:
        for tensor in tensors:
            tio.decode_jpeg(tensor, mode=tio.ImageReadMode.RGB)
        return len(tensors)

    def torchvision_crops() -> int:  # what the loader workers run
        photo_views(tensors, PhotoViews(SIZE, 2, random=True), rng, torch.device("cpu"))
        return len(tensors)

    variants = {
        "PIL decode": timed(pil_decode),
        "PIL draft + 2 crops": timed(pil_crops),
        "torchvision.io decode": timed(torchvision_decode),
        "torchvision.io + 2 crops (ours)": timed(torchvision_crops),
    }
    try:
        import simplejpeg

        def simplejpeg_decode() -> int:
            for blob in blobs:
                simplejpeg.decode_jpeg(blob)
            return len(blobs)

        variants["simplejpeg decode"] = timed(simplejpeg_decode)
    except ImportError:
        print("simplejpeg is not installed: `pip install simplejpeg` to measure it too")
    rates = medians(interleaved(variants, repeats))
    torch.set_num_threads(torch.get_num_threads())
    return rates


def sharding_rates(folder: Path, work: Path, workers: int, repeats: int) -> dict[str, float]:
    """Files/s of ``sslpipe shard folder:`` with 1 and ``workers`` processes."""
    files, classes = photo_files(f"folder:{folder}")
    total = sum(len(entries) for entries in files.values())

    def shard(count: int) -> Callable[[], int]:
        def run() -> int:
            write_photo_shards(
                files,
                classes,
                work / f"shards-{count}",
                source={"name": "bench"},
                workers=count,
                samples_per_shard=max(1, total // (4 * workers)),
                overwrite=True,
                progress=False,
            )
            return total

        return timed(run)

    return medians(interleaved({"1 process": shard(1), f"{workers} processes": shard(workers)}, repeats, warmup=0))


def gpu_rate(shards: Path, repeats: int) -> float | None:
    """Photos/s of decode (nvJPEG, batched) + crops + SimCLR views alone on the GPU."""
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    loader = ShardLoader(
        shards,
        "train",
        256,
        rank=0,
        world_size=1,
        num_workers=4,
        pin_memory=True,
        views=PhotoViews(SIZE, 2, random=True),
        encoded=every_photo,
    )
    batches = [batch[0] for batch in loader]
    augmenter = ViewAugmenter("simclr", SIZE, 3, 2, seed=0, crop=False)
    rng = np.random.default_rng(0)

    def run() -> int:
        count = 0
        for encoded in batches:
            augmenter(photo_views(encoded.blobs(), PhotoViews(SIZE, 2, random=True), rng, device))
            count += len(encoded.lengths)
        torch.cuda.synchronize()
        return count

    return medians(interleaved({"gpu": timed(run)}, repeats))["gpu"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=40, help="train photos per photograph (23 photographs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="loader and sharding processes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        started = time.perf_counter()
        folder = make_photo_folder(work / "folder", args.per_class, 0, min_side=256, max_side=512)
        train = folder / "train"
        files = sorted(train.rglob("*.jpg"))
        print(f"{len(files)} photos (256-512 px crops of 23 photographs) in {time.perf_counter() - started:.0f} s")
        shards = work / "shards"
        write_photo_shards(
            {"train": [(str(f), -1) for f in files]},
            [],
            shards,
            source={"name": "bench"},
            samples_per_shard=max(1, len(files) // 8),
            progress=False,
        )
        source_bytes = sum(f.stat().st_size for f in files)
        shard_bytes = sum(f.stat().st_size for f in shards.glob("*.tar"))
        print("\nsharding (files/s)")
        sharding = sharding_rates(train, work, args.workers, args.repeats)
        print_table([{"variant": k, "files/s": v} for k, v in sharding.items()])
        print("\ndecoders on one core (photos/s)")
        decoders = decoder_rates(files[:300], args.repeats)
        print_table([{"decoder": k, "photos/s per core": v} for k, v in decoders.items()])
        print(f"\nCPU data path, {args.workers} loader processes each (source photos/s, two 224 px views each)")
        torch.set_num_threads(1)  # the main process: our augmentation, the peer's collation
        paths = medians(
            interleaved(
                {
                    f"{who}, {views}": timed(epoch(where, args.workers, blur))
                    for blur, views in ((False, VIEWS), (True, VIEWS_BLUR))
                    for who, epoch, where in (("ours", ours_epoch, shards), (PEER, peer_epoch, train))
                },
                args.repeats,
            )
        )
        ratios = {views: paths[f"ours, {views}"] / paths[f"{PEER}, {views}"] for views in (VIEWS, VIEWS_BLUR)}
        print_table(
            [{"data path": k, "photos/s": v, "ours / peer": ratios[k.split(", ", 1)[1]]} for k, v in paths.items()]
        )
        gpu = gpu_rate(shards, args.repeats)
    single = sharding["1 process"]
    summary = {
        "photos": len(files),
        "shard_bytes_over_source": shard_bytes / source_bytes,
        "sharding_files_per_s": sharding,
        "sharding_efficiency": sharding[f"{args.workers} processes"] / (args.workers * single),
        "decoders_photos_per_s_per_core": decoders,
        "data_path_photos_per_s": paths,
        "data_path_ours_over_peer": ratios,
        "gpu_decode_augment_photos_per_s": gpu,
        "workers": args.workers,
        "batch_size": BATCH,
        "image_size": SIZE,
    }
    print_table(
        [
            {"target": "shard bytes / source bytes (<= 1.05)", "value": summary["shard_bytes_over_source"]},
            {
                "target": f"sharding: {args.workers} processes / ({args.workers} x 1) (>= 0.8)",
                "value": summary["sharding_efficiency"],
            },
            {"target": f"data path: ours / peer, {VIEWS} (>= 2)", "value": ratios[VIEWS]},
            {"target": f"data path: ours / peer, {VIEWS_BLUR}", "value": ratios[VIEWS_BLUR]},
            {"target": "GPU decode + augment, photos/s (> 5,000)", "value": gpu},
        ]
    )
    write_results("photos", summary)


if __name__ == "__main__":
    main()
