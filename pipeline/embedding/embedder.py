"""Embedding pieces of work with one exported encoder: images become its input as evaluation makes it (photos
center-cropped at ``spec.image_size``, arrays as they are or their central square resized, channels matched to
``spec.channels``), in Ray actors (one per GPU, or CPU workers) or in this process."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm import tqdm

from augment.presets import to_unit_float
from pipeline.data.decode import PhotoViews, center_boxes, decodable_views
from pipeline.data.photos import PhotoError, prepare_photo
from pipeline.data.reading import Skipped, read_shard
from pipeline.embedding.pieces import FileWork, ShardWork, Work
from pipeline.errors import ConfigError, SslpipeError
from pipeline.models import EncoderSpec

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L"
UNLIMITED_SIDE = 1 << 30  # folder photos are converted like shard photos, never resized
DECODED_BYTES = 1 << 30  # a batch's decoded images, at most (the device holds them all before cropping)


@dataclass
class Embedded:
    """What a piece gives: ``ids``, ``labels`` int64 ``(n,)`` (``-1``: none), ``embeddings`` float32 ``(n, D)``
    and why samples of the piece were skipped."""

    ids: list[str]
    labels: np.ndarray
    embeddings: np.ndarray
    skipped: list[Skipped]


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
        for chunk in bounded_batches(self._samples(work, skipped), self.batch_size, DECODED_BYTES):
            ids, labels, images, names = zip(*chunk, strict=True)
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
            work.url,
            work.expected,
            work.image_shape,
            skipped if self.skip_bad_samples else None,
            start=work.start,
            stop=work.stop,
            group_size=work.group_size,
        ):
            for image, label, index in zip(images, labels.tolist(), indices.tolist(), strict=True):
                sample_id = f"{work.split}-{index:08d}"
                yield sample_id, label, image, f"{work.url}: sample {sample_id!r}"

    def _crops(self, blobs: list[bytes], names: list[str], skipped: list[Skipped]) -> tuple[torch.Tensor, list[int]]:
        """Center crops uint8 ``(b, 3, size, size)`` of the photos that decode, and their positions."""
        tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]

        def bad(position: int, reason: str) -> None:
            self._bad(f"{names[position]} cannot be decoded ({reason})", skipped)

        crops, kept = decodable_views(tensors, self.views, None, self.device, bad)
        return crops[:, 0], kept

    def _bad(self, reason: str, skipped: list[Skipped]) -> None:
        if not self.skip_bad_samples:
            raise SslpipeError(f"{reason}; fix or remove it, or pass --skip-bad-samples to skip and count such images")
        skipped.append(Skipped(1, reason))


def _decoded_bytes(image: object) -> int:
    """Bytes of ``image`` decoded: an array's own; a photo's (uint8 RGB) from its header, 0 where that is unreadable
    (decoding it will say why)."""
    if isinstance(image, np.ndarray):
        return image.nbytes
    try:
        with Image.open(io.BytesIO(image)) as photo:
            return 3 * photo.width * photo.height
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 0


def bounded_batches(samples: Iterable[tuple], size: int, max_bytes: int) -> Iterator[list]:
    """``samples`` (their third item an image or a photo's bytes) in chunks of at most ``size`` that decode to at
    most ``max_bytes`` (a chunk holds at least one sample): 256 photos of 12 MP would be ~9 GB on the device."""
    chunk, held = [], 0
    for sample in samples:
        need = _decoded_bytes(sample[2])
        if chunk and (len(chunk) == size or held + need > max_bytes):
            yield chunk
            chunk, held = [], 0
        chunk.append(sample)
        held += need
    if chunk:
        yield chunk


@contextlib.contextmanager
def embedded(
    pieces: list[Work],
    encoder: nn.Module,
    spec: EncoderSpec,
    workers: int | None,
    batch_size: int,
    skip_bad_samples: bool,
    bar: tqdm,
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
