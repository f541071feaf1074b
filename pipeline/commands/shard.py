"""``sslpipe shard``, ``verify`` and ``preview``: a data set written as WebDataset tar shards with their manifest
(photos keep their JPEG bytes; arrays as PNG or npy), checked against the manifest, and a grid of its views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from augment import preview_batch
from pipeline.data import Manifest, ShardLoader, open_source, read_manifest, write_shards
from pipeline.data.decode import PhotoViews
from pipeline.data.manifest import verify_shards
from pipeline.data.photo_shards import write_photo_shards
from pipeline.data.photos import photo_files


def is_photo_source(source: str, image_size: int | None) -> bool:
    """Whether ``source`` is photo files kept as they are (a list, or a folder not resized to arrays)."""
    return source.startswith("list:") or (source.startswith("folder:") and not image_size)


def shard(source: str, out: str, options: dict[str, Any]) -> Manifest:
    """Shard ``source`` into ``out`` with the command's ``options`` (see ``sslpipe shard --help``)."""
    if is_photo_source(source, options["image_size"]):
        files, classes = photo_files(
            source, unlabeled=options["unlabeled"], test_fraction=options["test_fraction"], seed=options["seed"]
        )
        return write_photo_shards(
            files,
            classes,
            out,
            source={"name": source},
            samples_per_shard=options["samples_per_shard"] or 1000,
            max_side=options["max_side"],
            lossless=options["lossless"],
            seed=options["seed"],
            workers=options["workers"],
            use_ray=options["ray"],
            overwrite=options["overwrite"],
        )
    arrays = open_source(
        source,
        options["root"],
        download=not options["no_download"],
        image_size=options["image_size"],
        channels=options["channels"],
        num_train=options["num_train"],
        num_test=options["num_test"],
        num_classes=options["num_classes"],
        test_fraction=options["test_fraction"],
        seed=options["seed"],
    )
    return write_shards(
        arrays,
        out,
        samples_per_shard=options["samples_per_shard"] or 4096,
        encoding=options["encoding"],
        images_per_member=options["images_per_member"],
        seed=options["seed"],
        overwrite=options["overwrite"],
    )


def show(manifest: Manifest, out: str) -> None:
    for name, split in manifest.splits.items():
        print(f"{name}: {split.num_samples} samples in {len(split.shards)} shards")
    if manifest.rejects:
        print(f"left out {len(manifest.rejects)} unreadable files (listed under rejects in the manifest)")
    if manifest.photos:
        sizes = manifest.image_sizes
        shape = f"photos, height {sizes['height']} and width {sizes['width']} (min, median, max)"
    else:
        shape = f"image shape {list(manifest.image_shape)}"
    print(f"wrote {out}/manifest.json ({shape}, sha256 {manifest.digest()[:12]})")


def verify(location: str) -> int:
    """Check every shard's sha256 and size against ``manifest.json``; returns how many shards."""
    manifest = read_manifest(location)
    verify_shards(location, manifest)
    return sum(len(split.shards) for split in manifest.splits.values())


def preview(
    location: str, split: str, count: int, views: int, seed: int, image_size: int, preset: str, out: Path
) -> Path:
    """A PNG grid of ``count`` images of ``split`` above ``views`` views of each (photos cropped to ``image_size``)."""
    loader = ShardLoader(
        location,
        split,
        count,
        rank=0,
        world_size=1,
        num_workers=0,
        seed=seed,
        views=PhotoViews(image_size, views, random=True),
    )
    return preview_batch(loader, preset, views, image_size, seed, out)
