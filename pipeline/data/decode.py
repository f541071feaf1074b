"""Photo bytes -> uint8 image crops, on the device that trains: CUDA decodes a whole batch at once (nvJPEG, via
``torchvision.io.decode_jpeg(device="cuda")``); on CPUs loader workers decode one photo at a time with
libjpeg-turbo (``torchvision.io``: 1.6x PIL's decode and within 10% of simplejpeg on 256-1024 px photos,
``benchmarks/photos.py``), so a batch of full-size photos never sits in memory.

Every photo gives ``count`` crops resized to ``size`` (bilinear, antialiased): random-resized crops for training
(:func:`random_boxes`, torchvision's ``RandomResizedCrop`` sampling) or the usual evaluation crop
(:func:`center_boxes`: resize the short side to ``size / 0.875``, keep the central ``size`` square). Boxes are
``(top, left, height, width)`` in pixels of the decoded photo. torchvision is imported where photos are decoded:
importing it costs every process that reads shards (each Ray Train worker) ~2.5 s.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

CENTER_FRACTION = 0.875  # 224 / 256
JPEG_MAGIC = b"\xff\xd8"
ATTEMPTS = 10
FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)
SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # baseline and extended sequential, Huffman-coded


class UndecodablePhoto(ValueError):
    """Photo ``position`` of a batch cannot be decoded, for ``reason``."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"photo {position} of the batch cannot be decoded ({reason})")
        self.position, self.reason = position, reason


@dataclass(frozen=True)
class PhotoViews:
    """How a photo becomes training or evaluation input: ``count`` crops of ``size`` px; ``random``:
    random-resized crops of ``scale`` (fraction of the area) and ``ratio`` (width / height), else one center crop."""

    size: int
    count: int = 1
    random: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


class EncodedImages(NamedTuple):
    """A batch of undecoded photos: ``data`` uint8 ``(B, L)``, each row a file's bytes zero-padded to the
    longest, and ``lengths`` int64 ``(B,)``. Rows of length 0 are photos the loader decoded and cropped itself
    (:func:`device_reads`): their crops, in row order, are ``crops`` uint8 ``(m, count, 3, size, size)``."""

    data: torch.Tensor
    lengths: torch.Tensor
    crops: torch.Tensor | None = None

    @classmethod
    def pack(cls, blobs: Sequence[bytes], crops: torch.Tensor | None = None) -> EncodedImages:
        lengths = torch.tensor([len(b) for b in blobs], dtype=torch.int64)
        data = torch.zeros((len(blobs), int(lengths.max()) if len(blobs) else 0), dtype=torch.uint8)
        for row, blob in enumerate(blobs):
            if blob:
                data[row, : len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        return cls(data, lengths, crops)

    def take(self, rows: torch.Tensor) -> EncodedImages:
        """The batch of ``rows`` (int64 positions, increasing), their crops with them."""
        crops = self.crops
        if crops is not None:
            cropped = self.lengths == 0
            crops = crops[(torch.cumsum(cropped, 0) - 1)[rows][cropped[rows]]]
        return EncodedImages(self.data[rows], self.lengths[rows], crops)

    @staticmethod
    def concat(batches: Sequence[EncodedImages]) -> EncodedImages:
        """One batch of ``batches`` (rows re-padded to the longest file)."""
        width = max(e.data.shape[1] for e in batches)
        data = torch.cat([torch.nn.functional.pad(e.data, (0, width - e.data.shape[1])) for e in batches])
        crops = [e.crops for e in batches if e.crops is not None]
        return EncodedImages(data, torch.cat([e.lengths for e in batches]), torch.cat(crops) if crops else None)

    def blobs(self) -> list[torch.Tensor]:
        """Each photo's bytes, uint8 ``(L_i,)`` views of ``data``."""
        return [row[:length] for row, length in zip(self.data, self.lengths.tolist())]


def random_boxes(
    sizes: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Random-resized-crop boxes int64 ``(n, 4)`` for images of ``sizes`` ``(n, 2)`` (height, width): an area of
    ``scale`` times the image's and an aspect ratio log-uniform in ``ratio``, up to 10 tries per image; images
    where every try fails get the largest central box whose ratio is within ``ratio``."""
    heights, widths = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    n = len(sizes)
    box_h, box_w, found = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
    for _ in range(ATTEMPTS):
        area = heights * widths * rng.uniform(scale[0], scale[1], n)
        aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), n))
        w, h = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
        ok = ~found & (w > 0) & (h > 0) & (w <= widths) & (h <= heights)
        box_h[ok], box_w[ok] = h[ok], w[ok]
        found |= ok
    aspect = widths / heights
    fallback_w = np.where(aspect < ratio[0], widths, np.where(aspect > ratio[1], np.round(heights * ratio[1]), widths))
    fallback_h = np.where(aspect < ratio[0], np.round(widths / ratio[0]), heights)
    box_h[~found], box_w[~found] = fallback_h[~found], fallback_w[~found]
    top = np.floor(rng.random(n) * (heights - box_h + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (widths - box_w + 1)).astype(np.int64)
    return np.stack([top, left, box_h, box_w], axis=1)


def center_boxes(sizes: np.ndarray, fraction: float = CENTER_FRACTION) -> np.ndarray:
    """Central square boxes int64 ``(n, 4)`` of side ``fraction`` times each image's short side."""
    side = np.maximum(1, np.round(sizes.min(axis=1) * fraction)).astype(np.int64)
    return np.stack([(sizes[:, 0] - side) // 2, (sizes[:, 1] - side) // 2, side, side], axis=1)


def device_reads(blob: bytes) -> bool:
    """Whether the GPU's JPEG decoder reads ``blob`` as fast as any photo: an 8-bit JPEG whose frame is sequential
    and Huffman-coded (SOF0/SOF1) with 1 or 3 components. Progressive JPEGs (SOF2) are decoded by a host thread
    (its Huffman stage) and PNGs not at all, so they are better decoded by the loader processes, in parallel; so is
    anything this scan of the markers cannot read (the loader then names the damaged photo)."""
    if blob[:2] != JPEG_MAGIC:
        return False
    at = 2
    while at + 4 <= len(blob) and blob[at] == 0xFF:
        marker = blob[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
        elif marker in FRAMES:
            precision, components = blob[at + 4 : at + 5], blob[at + 9 : at + 10]
            return marker in SEQUENTIAL_HUFFMAN and precision == b"\x08" and components in (b"\x01", b"\x03")
        elif marker in (0xD9, 0xDA):  # the end, or scan data before any frame header
            return False
        else:
            at += 2 + int.from_bytes(blob[at + 2 : at + 4], "big")
    return False


def every_photo(blob: bytes) -> bool:
    """Every photo travels undecoded (e.g. to be copied as it is)."""
    return True


def _decode_cpu(blob: torch.Tensor) -> torch.Tensor:
    import torchvision.io as tio

    if bytes(blob[:2]) == JPEG_MAGIC:
        return tio.decode_jpeg(blob, mode=tio.ImageReadMode.RGB)
    return tio.decode_image(blob, mode=tio.ImageReadMode.RGB)


def _decode_one(blob: torch.Tensor, device: torch.device, counts: Counter[str]) -> torch.Tensor:
    """One photo on ``device``: a JPEG by the device's decoder where it has one, anything it refuses (and every
    other format) by the CPU's, then moved; ``counts`` adds which (``"device"`` or ``"host"``). Raises
    ``RuntimeError`` when neither can decode it."""
    import torchvision.io as tio

    if device.type == "cuda" and bytes(blob[:2]) == JPEG_MAGIC:
        with contextlib.suppress(RuntimeError):
            image = tio.decode_jpeg(blob, mode=tio.ImageReadMode.RGB, device=device)
            counts["device"] += 1
            return image
    image = _decode_cpu(blob).to(device, non_blocking=True)
    counts["host"] += 1
    return image


def _decode_batch(blobs: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The JPEGs ``blobs`` decoded together on ``device``. On CUDA torchvision's decoder writes on a stream of its
    own into memory allocated on the current one, waiting only for that stream's own earlier work: memory the training
    stream freed could still be in use by its queued kernels. So the call runs with a side stream of ours current
    (its memory pool only ever holds decoded images), the training stream then waits on it, and each image is marked
    as used there (the allocator hands its memory out again only once the training stream is past it)."""
    import torchvision.io as tio

    if device.type != "cuda":
        return tio.decode_jpeg(list(blobs), mode=tio.ImageReadMode.RGB, device=device)
    main, side = torch.cuda.current_stream(device), _side_stream(device)
    with torch.cuda.stream(side):
        images = tio.decode_jpeg(list(blobs), mode=tio.ImageReadMode.RGB, device=device)
    main.wait_stream(side)
    for image in images:
        image.record_stream(main)
    return images


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def decode_images(
    blobs: Sequence[torch.Tensor], device: torch.device, batched: bool | None = None, counts: Counter[str] | None = None
) -> Iterator[torch.Tensor]:
    """uint8 ``(3, H_i, W_i)`` images of ``blobs`` (uint8 ``(L_i,)`` file bytes on the CPU) on ``device``, in order.
    ``batched`` (default: on CUDA) decodes the batch's JPEGs in one call; when that call fails (one bad file fails
    it), each photo is decoded alone, so the error comes from the right one. Otherwise one at a time, lazily. A photo
    no decoder can read raises ``RuntimeError`` where it stands. ``counts`` adds the photos each decoder read:
    ``"device"`` (the GPU's) or ``"host"`` (the CPU's)."""
    counts = Counter() if counts is None else counts
    jpeg = [i for i, blob in enumerate(blobs) if bytes(blob[:2]) == JPEG_MAGIC]
    decoded = {}
    if jpeg and (device.type == "cuda" if batched is None else batched):
        with contextlib.suppress(RuntimeError):
            decoded = dict(zip(jpeg, _decode_batch([blobs[i] for i in jpeg], device), strict=True))
    for i, blob in enumerate(blobs):
        if i in decoded:
            counts["device" if device.type == "cuda" else "host"] += 1
            yield decoded[i]
        else:
            yield _decode_one(blob, device, counts)


def photo_views(
    blobs: Sequence[torch.Tensor],
    views: PhotoViews,
    rng: np.random.Generator | None,
    device: torch.device,
    counts: Counter[str] | None = None,
) -> torch.Tensor:
    """uint8 ``(B, count, 3, size, size)`` crops of the photos ``blobs`` on ``device`` (``rng`` draws the
    random boxes; center crops need none; ``counts`` as :func:`decode_images`'). A photo that cannot be decoded
    raises :class:`UndecodablePhoto`."""
    import torchvision.transforms.v2.functional as TF

    out = torch.empty((len(blobs), views.count, 3, views.size, views.size), dtype=torch.uint8, device=device)
    images = decode_images(blobs, device, counts=counts)
    for i in range(len(blobs)):
        try:
            image = next(images)
        except RuntimeError as exn:
            raise UndecodablePhoto(i, str(exn).splitlines()[0]) from None
        sizes = np.tile(image.shape[1:], (views.count, 1))
        boxes = random_boxes(sizes, rng, views.scale, views.ratio) if views.random else center_boxes(sizes)
        if crops_at_once(device):
            out[i] = resized_crops(image, boxes, views.size)
            continue
        for v, (top, left, height, width) in enumerate(boxes.tolist()):
            out[i, v] = TF.resized_crop(image, top, left, height, width, [views.size, views.size], antialias=True)
    return out


JPEG_ENGINES = ((8, 0), (9, 0), (10, 0), (10, 3))  # compute capabilities of GPUs with NVJPG engines: A100/A30,
# H100/H200, B200, B300 (A10G, L4, T4 and V100 decode with CUDA cores and a host thread: slower than loader processes)


def decodes_on_device(decode: str, device: torch.device, capability: tuple[int, int] | None = None) -> bool:
    """Whether photos are decoded on ``device`` (``data.decode``): ``device``, or ``auto`` on a GPU whose compute
    ``capability`` (default: asked of CUDA) has a hardware JPEG engine; never off CUDA."""
    if device.type != "cuda" or decode == "loader":
        return False
    if decode == "device":
        return True
    return (capability or torch.cuda.get_device_capability(device)) in JPEG_ENGINES


def crops_at_once(device: torch.device) -> bool:
    """Whether a photo's crops are cut and resized in one call (:func:`resized_crops`): on accelerators, where each
    of a crop's few kernels is a launch (two views of 256 photos were ~3,000); on CPUs torchvision's antialiased
    resize per crop is the faster."""
    return device.type != "cpu"


def resized_crops(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> uint8 ``(n, 3, size, size)``: each of ``boxes`` int64 ``(n, 4)`` (top, left, height,
    width) resized in one ``roi_align``, every output pixel the mean of bilinear samples spread over its share of
    the box (as many as the box is larger: antialiasing by averaging)."""
    from torchvision.ops import roi_align

    top, left, height, width = torch.from_numpy(boxes).to(image.device, torch.float32, non_blocking=True).unbind(1)
    rois = torch.stack([torch.zeros_like(top), left, top, left + width, top + height], dim=1)
    crops = roi_align(image[None].float(), rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return crops.round_().clamp_(0, 255).to(torch.uint8)


def decodable_views(
    blobs: Sequence[torch.Tensor],
    views: PhotoViews,
    rng: np.random.Generator | None,
    device: torch.device,
    bad: Callable[[int, str], None],
    counts: Counter[str] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """:func:`photo_views` of the photos of ``blobs`` that decode, and their positions in ``blobs``;
    ``bad(position, reason)`` hears of each photo that does not (and may raise to stop); ``counts`` adds the
    decoders that read the photos kept."""
    keep = list(range(len(blobs)))
    while True:
        attempt = Counter()
        try:
            crops = photo_views([blobs[i] for i in keep], views, rng, device, attempt)
        except UndecodablePhoto as exn:
            bad(keep.pop(exn.position), exn.reason)
            continue
        if counts is not None:
            counts.update(attempt)
        return crops, keep


def batch_views(
    images: EncodedImages,
    views: PhotoViews,
    rng: np.random.Generator | None,
    device: torch.device,
    bad: Callable[[int, str], None],
    counts: Counter[str] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """:func:`decodable_views` of the batch's undecoded photos beside the crops the loader made of the others
    (``counts["loader"]`` adds those), in row order: ``(crops (B', count, 3, size, size), the rows kept)``."""
    blobs = images.blobs()
    here = [row for row, blob in enumerate(blobs) if len(blob)]
    if len(here) == len(blobs):
        return decodable_views(blobs, views, rng, device, bad, counts)
    crops, kept = decodable_views([blobs[i] for i in here], views, rng, device, lambda i, why: bad(here[i], why), counts)
    made = dict(zip([here[k] for k in kept], crops.unbind(0), strict=True))
    in_loader = [row for row, blob in enumerate(blobs) if not len(blob)]
    made |= dict(zip(in_loader, images.crops.to(device, non_blocking=True).unbind(0), strict=True))
    if counts is not None:
        counts["loader"] += len(in_loader)
    rows = sorted(made)
    return torch.stack([made[row] for row in rows]), rows
