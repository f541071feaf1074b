"""``sslpipe embed``: the embeddings of a data set by an exported encoder, computed in pieces by Ray actors (one
per GPU, or CPU workers) or in this process, and written in data order.

DATA is a shard location (folder or URL with ``manifest.json``) or a folder of images (``folder:PATH`` or a plain
directory, labeled by subfolder or not at all, with optional ``train``/``test`` subfolders as ``sslpipe shard``
reads it). Images become the encoder's input as evaluation makes it: photos center-cropped at the export's
``spec.image_size`` (short side scaled to ``size / 0.875``), arrays as they are (their central square resized
when their size differs), channels matched to ``spec.channels``.

Writes ``DIR/embeddings.parquet`` (``id``, ``split``, ``label``, ``class_name``, ``embedding``
``fixed_size_list<float32>[D]``), ``DIR/map.png`` (a 2-D map: UMAP where ``umap-learn`` is installed, else PCA,
coloured by class) and ``DIR/embed.json``, each atomically. Ids are the shards' sample keys (``{split}-{index:08d}``,
also for the images of chunked shards, whose members hold many) or the file paths relative to the folder (whose
``split`` is null without ``train``/``test`` subfolders); ``label`` and ``class_name`` are null where the data has no
classes. Rows come in data order (splits, shards and samples as the manifest lists them; files as listed), whatever
the number of workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from tqdm import tqdm

from augment.presets import to_unit_float
from pipeline.data import read_manifest, storage
from pipeline.data.decode import PhotoViews, UndecodablePhoto, center_boxes, photo_views
from pipeline.data.manifest import MANIFEST, check_local_shards
from pipeline.data.photos import PhotoError, photo_files, prepare_photo
from pipeline.data.stream import Skipped, read_shard
from pipeline.errors import ConfigError, SslpipeError
from pipeline.evaluate.plots import latent_scatter_png, projection_of
from pipeline.export import load_export
from pipeline.models import EncoderSpec

PARQUET, MAP, SUMMARY = "embeddings.parquet", "map.png", "embed.json"
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L"
MAP_POINTS = 20_000  # the map shows a seeded sample of at most this many rows
ROW_GROUP = 16_384
UNLIMITED_SIDE = 1 << 30  # folder photos are converted like shard photos, never resized


@dataclass(frozen=True)
class ShardWork:
    """Samples ``[start, stop)`` of one shard (``expected`` samples in all) of ``split``."""

    split: str
    url: str
    expected: int
    start: int
    stop: int
    image_shape: tuple[int, ...]  # (H, W, C) arrays, (3,) photos
    group_size: int

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class FileWork:
    """Image files of ``split`` (``None``: a folder without splits) as ``(id, location, label)``, label ``-1`` when
    unlabeled."""

    split: str | None
    files: tuple[tuple[str, str, int], ...]

    @property
    def count(self) -> int:
        return len(self.files)


Work = ShardWork | FileWork


@dataclass(frozen=True)
class Plan:
    """A data set cut into pieces of work, in data order."""

    pieces: list[Work]
    class_names: tuple[str, ...]
    total: int


@dataclass
class Embedded:
    """What a piece gives: ``ids``, ``labels`` int64 ``(n,)`` (``-1``: none), ``embeddings`` float32 ``(n, D)``
    and why samples of the piece were skipped."""

    ids: list[str]
    labels: np.ndarray
    embeddings: np.ndarray
    skipped: list[Skipped]


@dataclass(frozen=True)
class Summary:
    out: str
    count: int
    dim: int
    skipped: int
    seconds: float
    workers: int
    device: str
    projection: str


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """float ``(B, C, H, W)`` -> ``(B, channels, H, W)``: grey repeated, or RGB to grey by luma."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    if images.shape[1] == 3 and channels == 1:
        return (images * images.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise ConfigError(f"images have {images.shape[1]} channels; the encoder takes {channels}")


def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` arrays at ``size`` px: unchanged when ``H == W == size``, else their central square
    resized."""
    if images.shape[-2:] == (size, size):
        return images
    top, left, height, width = center_boxes(np.array([images.shape[-2:]]), fraction=1.0)[0].tolist()
    return TF.resized_crop(images, top, left, height, width, [size, size], antialias=True)


class Embedder:
    """Embeds pieces of work with one encoder (eval mode) on this process's device: a Ray actor, or in-process."""

    def __init__(self, encoder: nn.Module, spec: EncoderSpec, batch_size: int, skip_bad_samples: bool) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = encoder.eval().to(self.device, memory_format=torch.channels_last)
        self.spec, self.batch_size, self.skip_bad_samples = spec, batch_size, skip_bad_samples
        self.views = PhotoViews(spec.image_size)

    def device_name(self) -> str:
        return self.device.type

    @torch.no_grad()
    def embed(self, work: Work, progress: Callable[[int], None] | None = None) -> Embedded:
        ids, labels, rows, skipped = [], [], [], []
        for batch_ids, batch_labels, images in self._batches(work, skipped):
            x = match_channels(to_unit_float(images), self.spec.channels).contiguous(memory_format=torch.channels_last)
            rows.append(self.encoder(x).float().cpu().numpy())
            ids += batch_ids
            labels.append(batch_labels)
            if progress:
                progress(len(batch_ids))
        embeddings = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        return Embedded(ids, np.concatenate(labels) if labels else np.zeros(0, np.int64), embeddings, skipped)

    def _batches(self, work: Work, skipped: list[Skipped]) -> Iterator[tuple[list[str], np.ndarray, torch.Tensor]]:
        """``(ids, labels, uint8 images (b, C, size, size) on the device)`` of ``work``, ``batch_size`` at a time."""
        for chunk in _chunks(self._samples(work, skipped), self.batch_size):
            ids, labels, images, names = zip(*chunk)
            if isinstance(work, ShardWork) and len(work.image_shape) == 3:
                arrays = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device)
                yield list(ids), np.array(labels, np.int64), fit_size(arrays, self.spec.image_size)
                continue
            crops, kept = self._crops(list(images), list(names), skipped)
            if kept:
                yield [ids[i] for i in kept], np.array([labels[i] for i in kept], np.int64), crops

    def _samples(self, work: Work, skipped: list[Skipped]) -> Iterator[tuple[str, int, object, str]]:
        """``(id, label, image, name for errors)``: an array ``(H, W, C)`` or a photo's file bytes."""
        if isinstance(work, FileWork):
            for sample_id, location, label in work.files:
                try:
                    yield sample_id, label, prepare_photo(location, UNLIMITED_SIDE, lossless=True).data, location
                except PhotoError as exn:
                    self._bad(f"{location}: {exn}", skipped)
            return
        for images, labels, indices in read_shard(
            work.url, work.expected, work.image_shape, skipped if self.skip_bad_samples else None,
            start=work.start, stop=work.stop, group_size=work.group_size,
        ):
            for image, label, index in zip(images, labels.tolist(), indices.tolist()):
                sample_id = f"{work.split}-{index:08d}"
                yield sample_id, label, image, f"{work.url}: sample {sample_id!r}"

    def _crops(self, blobs: list[bytes], names: list[str], skipped: list[Skipped]) -> tuple[torch.Tensor, list[int]]:
        """Center crops uint8 ``(b, 3, size, size)`` of the photos that decode, and their positions."""
        tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
        kept = list(range(len(blobs)))
        while True:
            try:
                return photo_views([tensors[i] for i in kept], self.views, None, self.device)[:, 0], kept
            except UndecodablePhoto as exn:
                bad = kept.pop(exn.position)
                self._bad(f"{names[bad]} cannot be decoded ({exn.reason})", skipped)

    def _bad(self, reason: str, skipped: list[Skipped]) -> None:
        if not self.skip_bad_samples:
            raise SslpipeError(f"{reason}; fix or remove it, or pass --skip-bad-samples to skip and count such images")
        skipped.append(Skipped(1, reason))


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- what to embed ----------------------------------------------------------------------------------------------


def plan_data(data: str, split: str | None = None, piece_size: int = 1024) -> Plan:
    """``data`` cut into pieces of at most ``piece_size`` images (never across shards), in data order."""
    if piece_size < 1:
        raise ConfigError(f"piece_size must be >= 1, got {piece_size}")
    if data.startswith("folder:"):
        return _plan_folder(Path(data[len("folder:"):]), split, piece_size)
    if storage.is_local(data):
        path = storage.local_path(data)
        if not path.exists():
            raise SslpipeError(f"{data}: no such shard folder or image folder")
        if not (path / MANIFEST).is_file():
            return _plan_folder(path, split, piece_size)
    manifest = read_manifest(data)
    shape = (3,) if manifest.photos else tuple(manifest.image_shape[i] for i in (1, 2, 0))
    pieces: list[Work] = []
    for name in [split] if split else list(manifest.splits):
        check_local_shards(data, manifest, name)
        step = -(-piece_size // manifest.images_per_member) * manifest.images_per_member  # whole members
        for shard in manifest.split(name).shards:
            url = storage.join(data, shard.name)
            for start in range(0, shard.num_samples, step):
                stop = min(start + step, shard.num_samples)
                pieces.append(ShardWork(name, url, shard.num_samples, start, stop, shape, manifest.images_per_member))
    return Plan(pieces, tuple(manifest.class_names), sum(p.count for p in pieces))


def _plan_folder(folder: Path, split: str | None, piece_size: int) -> Plan:
    """A folder's images by split (``train``/``test`` subfolders) or, without them, as one unnamed split."""
    splits, classes = photo_files(f"folder:{folder}", test_fraction=0.0)
    named = len(splits) > 1  # else the whole folder, which photo_files calls train
    if split is not None:
        if not named or split not in splits:
            has = f"it has {', '.join(splits)}" if named else "it has no train/test subfolders"
            raise SslpipeError(f"folder:{folder} has no split {split!r}; {has}")
        splits = {split: splits[split]}
    if not any(splits.values()):
        raise SslpipeError(f"{folder}: no images found and no {MANIFEST}; pass a shard location or a folder of images")
    root = folder.absolute()
    pieces: list[Work] = []
    for name, files in splits.items():
        entries = [(os.path.relpath(path, root), str(Path(path).absolute()), label) for path, label in files]
        pieces += [FileWork(name if named else None, tuple(entries[i : i + piece_size]))
                   for i in range(0, len(entries), piece_size)]
    return Plan(pieces, tuple(classes), sum(p.count for p in pieces))


# --- the run ----------------------------------------------------------------------------------------------------


def embed(
    model: str, data: str, out: str, *, split: str | None = None, workers: int | None = None, batch_size: int = 256,
    piece_size: int = 1024, overwrite: bool = False, skip_bad_samples: bool = False, progress: bool = True,
    report: Callable[[str], None] = print,
) -> Summary:
    """Embed ``data`` with ``model`` into ``out`` (see the module docstring). ``workers``: ``0`` or ``1`` run in
    this process without Ray; more, Ray actors (one GPU each where the cluster has GPUs); ``None``, one per GPU,
    else 2."""
    began = time.monotonic()
    if storage.names(out, PARQUET) and not overwrite:
        raise SslpipeError(f"{storage.join(out, PARQUET)} exists; pass --overwrite to replace it")
    if batch_size < 1 or (workers is not None and workers < 0):
        raise ConfigError(f"batch_size ({batch_size}) must be >= 1 and workers ({workers}) >= 0")
    encoder, spec = load_export(model)
    encoder.eval()
    plan = plan_data(data, split, piece_size)
    bar = tqdm(total=plan.total, unit="img", desc="embed", disable=not progress)
    with bar, _run(plan.pieces, encoder, spec, workers, batch_size, skip_bad_samples, bar) as (results, used, device):
        count, dim, sample, skipped = _write_parquet(out, data, plan, results)
    projection = _write_map(out, *sample, plan.class_names, f"{model} on {data}: {count} images")
    if skipped:
        report(f"skipped {sum(s.count for s in skipped)} bad samples (first: {skipped[0].reason})")
    seconds = time.monotonic() - began
    summary = Summary(str(out), count, dim, sum(s.count for s in skipped), seconds, used, device, projection)
    info = {"model": str(model), "data": str(data), "split": split, "count": count, "dim": dim,
            "seconds": round(seconds, 3), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "workers": used, "device": device, "map": projection, "image_size": spec.image_size,
            "channels": spec.channels, "skipped": summary.skipped, "skipped_first": [s.reason for s in skipped[:10]]}
    with storage.atomic_writer(out, SUMMARY) as handle:
        handle.write(json.dumps(info, indent=2).encode())
    return summary


@contextlib.contextmanager
def _run(
    pieces: list[Work], encoder: nn.Module, spec: EncoderSpec, workers: int | None, batch_size: int,
    skip_bad_samples: bool, bar: tqdm,
) -> Iterator[tuple[Iterator[Embedded], int, str]]:
    """``(results in the order of pieces, workers used, device kind)``; Ray actors live for the block."""
    if workers is not None and workers <= 1:
        embedder = Embedder(encoder, spec, batch_size, skip_bad_samples)
        yield (embedder.embed(p, bar.update) for p in pieces), 1, embedder.device_name()
        return
    import ray
    from ray.util import ActorPool

    from pipeline import cluster

    gpus = int(cluster.resources().get("GPU", 0))
    count = workers or gpus or 2
    actor = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(Embedder)
    handle = ray.put(encoder)
    actors = [actor.remote(handle, spec, batch_size, skip_bad_samples) for _ in range(count)]

    def results() -> Iterator[Embedded]:
        try:
            for result in ActorPool(actors).map(lambda a, piece: a.embed.remote(piece), pieces):
                bar.update(len(result.ids) + sum(s.count for s in result.skipped))
                yield result
        except ray.exceptions.RayTaskError as exn:
            if isinstance(exn.cause, SslpipeError):
                raise SslpipeError(str(exn.cause)) from None
            raise

    try:
        yield results(), count, "cuda" if gpus else "cpu"
    finally:
        for a in actors:
            ray.kill(a)


def _write_parquet(
    out: str, data: str, plan: Plan, results: Iterator[Embedded]
) -> tuple[int, int, tuple[np.ndarray, np.ndarray], list[Skipped]]:
    """Write the results in order, a row group per ``ROW_GROUP`` rows; returns ``(rows, D, (a seeded sample of
    embeddings and their labels for the map), skipped)``. No file appears when no image could be embedded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fraction = min(1.0, MAP_POINTS / max(1, plan.total))
    count, dim, writer, pending, sampled, skipped = 0, 0, None, [], [], []
    with storage.atomic_writer(out, PARQUET) as handle:
        try:
            for index, (piece, result) in enumerate(zip(plan.pieces, results)):
                skipped += result.skipped
                if not result.ids:
                    continue
                dim = result.embeddings.shape[1]
                if writer is None:
                    writer = pq.ParquetWriter(handle, _schema(pa, dim))
                pending.append(_table(pa, piece.split, result, plan.class_names, dim))
                count += len(result.ids)
                if sum(len(t) for t in pending) >= ROW_GROUP:
                    writer.write_table(pa.concat_tables(pending))
                    pending = []
                chosen = np.random.default_rng([0, index]).random(len(result.ids)) < fraction
                sampled.append((result.embeddings[chosen], result.labels[chosen]))
            if writer is None:
                reason = skipped[0].reason if skipped else "none found"
                raise SslpipeError(f"{data}: no image could be embedded ({reason})")
            if pending:
                writer.write_table(pa.concat_tables(pending))
        finally:  # (the file is discarded when this raised)
            if writer is not None:
                writer.close()
    embeddings, labels = (np.concatenate(column) for column in zip(*sampled))
    return count, dim, (embeddings, labels), skipped


def _schema(pa, dim: int):
    return pa.schema([("id", pa.string()), ("split", pa.string()), ("label", pa.int64()),
                      ("class_name", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])


def _table(pa, split: str | None, result: Embedded, class_names: tuple[str, ...], dim: int):
    labels = result.labels
    names = [class_names[i] if 0 <= i < len(class_names) else None for i in labels.tolist()]
    values = pa.array(result.embeddings.astype(np.float32, copy=False).reshape(-1), pa.float32())
    return pa.Table.from_arrays(
        [pa.array(result.ids, pa.string()), pa.array([split] * len(labels), pa.string()),
         pa.array(labels, pa.int64(), mask=labels < 0), pa.array(names, pa.string()),
         pa.FixedSizeListArray.from_arrays(values, dim)],
        schema=_schema(pa, dim),
    )


def _write_map(out: str, embeddings: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], title: str) -> str:
    """``map.png``: the embeddings projected to 2-D, coloured by class; returns the projection's name."""
    with storage.atomic_writer(out, MAP) as handle:
        latent_scatter_png(embeddings, labels, class_names, handle, title)
    return projection_of(embeddings)
