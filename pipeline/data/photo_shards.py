"""``sslpipe shard`` for photos: every shard is one task, run by ``workers`` local processes or as Ray tasks.

Each sample is ``{split}-{index:08d}.jpg`` (or ``.png``) plus ``.cls`` (the label as ASCII) when the source is
labeled; ``index`` is the file's position in the split's listing. Files that cannot be read are left out and
listed in the manifest's ``rejects``. As for arrays, shards appear whole or not at all and the manifest comes last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from pipeline import __version__, storage
from pipeline.data.array_shards import TAR_MTIME, HashingWriter, clear_previous
from pipeline.data.manifest import Manifest, ShardInfo, SplitInfo, write_manifest
from pipeline.data.photos import EXTENSIONS, PhotoEntry, PhotoError, prepare_photo
from pipeline.errors import ConfigError, ShardError


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its folder or URL prefix, name and split, its photos, and how to store them."""

    out: str
    name: str
    split: str
    entries: tuple[PhotoEntry, ...]
    max_side: int
    lossless: bool
    num_classes: int


@dataclass
class ShardResult:
    """A written shard, the stored sizes ``(n, 2)`` (height, width) of its photos, channel sums of its reduced
    decodes, and the files it left out as ``(location, reason)``."""

    task: ShardTask
    info: ShardInfo
    sizes: np.ndarray
    pixels: int
    sums: np.ndarray
    squares: np.ndarray
    rejects: list[tuple[str, str]]


def write_photo_shard(task: ShardTask) -> ShardResult:
    class_counts = np.zeros(task.num_classes, dtype=np.int64)
    sizes, rejects, pixels, sums, squares = [], [], 0, np.zeros(3), np.zeros(3)
    with storage.atomic_writer(task.out, task.name) as handle:
        hashing = HashingWriter(handle)
        with wds.TarWriter(hashing, encoder=False, mtime=TAR_MTIME) as writer:
            for entry in task.entries:
                try:
                    photo = prepare_photo(entry.location, task.max_side, task.lossless)
                except PhotoError as exn:
                    rejects.append((entry.location, str(exn)))
                    continue
                sample = {"__key__": f"{task.split}-{entry.index:08d}", photo.ext: photo.data}
                if entry.label >= 0:
                    sample["cls"] = str(entry.label).encode()
                    class_counts[entry.label] += 1
                writer.write(sample)
                sizes.append((photo.height, photo.width))
                pixels, sums, squares = pixels + photo.pixels, sums + photo.sums, squares + photo.squares
    info = ShardInfo(task.name, len(sizes), hashing.size, hashing.digest.hexdigest(), tuple(class_counts.tolist()))
    return ShardResult(task, info, np.array(sizes, dtype=np.int64).reshape(-1, 2), pixels, sums, squares, rejects)


def run_tasks(tasks: Sequence[ShardTask], workers: int, use_ray: bool) -> Iterator[ShardResult]:
    """Results of ``tasks`` as they finish: in this process, in ``workers`` processes, or as Ray tasks (one CPU
    each, on whichever nodes of the cluster have room; ``out`` must then be a URL or a folder every node sees)."""
    if use_ray:
        import ray

        from pipeline import cluster

        cluster.connect()
        remote = ray.remote(num_cpus=1)(write_photo_shard)
        pending = [remote.remote(task) for task in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    elif workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for future in as_completed([pool.submit(write_photo_shard, task) for task in tasks]):
                yield future.result()
    else:
        yield from map(write_photo_shard, tasks)


def size_summary(sizes: np.ndarray, total_bytes: int) -> dict:
    """The manifest's ``image_sizes``: count, min/median/max of height and width, mean bytes per image."""
    summary = {"count": len(sizes), "mean_bytes": round(total_bytes / max(1, len(sizes)))}
    for axis, name in enumerate(("height", "width")):
        values = sizes[:, axis]
        summary[name] = [int(values.min()), int(np.median(values)), int(values.max())] if len(values) else []
    return summary


def write_photo_shards(
    files: dict[str, list[tuple[str, int]]],
    class_names: Sequence[str],
    out: str | Path,
    *,
    source: dict,
    samples_per_shard: int = 1000,
    max_side: int = 512,
    lossless: bool = False,
    seed: int = 0,
    workers: int = 1,
    use_ray: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> Manifest:
    """Shard the ``files`` of each split (``[(location, label)]``, label ``-1`` when unlabeled) into ``out``."""
    if samples_per_shard < 1 or max_side < 1 or workers < 1:
        raise ConfigError(f"samples_per_shard ({samples_per_shard}), max_side ({max_side}) and workers ({workers}) "
                          "must be >= 1")
    if not files.get("train"):
        raise ShardError(f"{source['name']}: no images found (looked for {' '.join(EXTENSIONS)} files)")
    clear_previous(out, overwrite)
    tasks = []
    for split_index, (split, entries) in enumerate(files.items()):
        order = np.random.default_rng([seed, split_index]).permutation(len(entries))
        for shard, start in enumerate(range(0, len(order), samples_per_shard)):
            chosen = tuple(PhotoEntry(*entries[i], index=int(i)) for i in order[start : start + samples_per_shard])
            tasks.append(ShardTask(storage.absolute(out), f"{split}-{shard:06d}.tar", split, chosen, max_side,
                                   lossless, len(class_names)))
    results = []
    total = sum(len(task.entries) for task in tasks)
    with tqdm(total=total, unit="img", desc=f"shard {source['name']}", disable=not progress) as bar:
        for result in run_tasks(tasks, workers, use_ray):
            results.append(result)
            bar.update(len(result.task.entries))
    results.sort(key=lambda r: r.task.name)
    rejects = [{"file": location, "reason": reason} for r in results for location, reason in r.rejects]
    for reject in rejects[:5]:
        report(f"left out {reject['file']}: {reject['reason']}")
    if len(rejects) > 5:
        report(f"... and {len(rejects) - 5} more files left out (all listed in the manifest's rejects)")
    splits = {}
    for split in files:
        shards = tuple(r.info for r in results if r.task.split == split)
        if not sum(s.num_samples for s in shards):
            raise ShardError(f"{source['name']}: no readable image in split {split!r}; see the files left out above")
        splits[split] = SplitInfo(sum(s.num_samples for s in shards), shards)
    train = [r for r in results if r.task.split == "train"]
    pixels = sum(r.pixels for r in train)
    mean = sum(r.sums for r in train) / pixels
    std = np.sqrt(np.maximum(sum(r.squares for r in train) / pixels - mean**2, 0.0))
    sizes = np.concatenate([r.sizes for r in results])
    manifest = Manifest(
        source=source, splits=splits, image_shape=(3,), encoding="jpg", images_per_member=1,
        class_names=tuple(class_names), channel_mean=tuple(mean.round(6).tolist()),
        channel_std=tuple(std.round(6).tolist()), order_seed=seed,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), writer_version=__version__,
        layout="photos", image_sizes=size_summary(sizes, sum(r.info.bytes for r in results)),
        rejects=tuple(rejects),
    )
    write_manifest(manifest, out)
    return manifest

