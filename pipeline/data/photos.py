"""Photo sources for ``sslpipe shard``: list a folder (or a list file) fast, and prepare each photo for a shard.

A photo keeps its original JPEG bytes unless its long side exceeds ``max_side`` (then it is resized once, aspect
kept, and re-encoded as JPEG at :data:`JPEG_QUALITY`) or it is not a plain upright RGB JPEG: PNG, WebP, TIFF,
grayscale, CMYK and EXIF-rotated images are converted once to RGB JPEG (or to PNG with ``lossless``). Every
stored JPEG is checked by a reduced (DCT-scaled) decode, which reads its whole entropy-coded stream, so a
truncated file is rejected at sharding time, not in the middle of training.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline import storage
from pipeline.data.sources import hold_out
from pipeline.errors import SourceError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
JPEG_QUALITY = 95
STATS_SIDE = 64  # channel statistics come from a decode reduced to about this size
ORIENTATION = 0x0112  # EXIF tag


class PhotoError(Exception):
    """A file that cannot become a photo sample; the message says why (it goes to the manifest's rejects)."""


@dataclass(frozen=True)
class PhotoEntry:
    """One source file: a local path or URL, its label (``-1``: unlabeled) and its index in its split."""

    location: str
    label: int
    index: int


@dataclass(frozen=True)
class Prepared:
    """A photo ready for a shard: the member's bytes and extension (``jpg`` or ``png``), its stored size, and the
    per-channel sums of its pixels scaled to [0, 1] (``pixels``, ``sums (3,)``, ``squares (3,)``), estimated from
    a reduced decode."""

    data: bytes
    ext: str
    height: int
    width: int
    pixels: int
    sums: np.ndarray
    squares: np.ndarray


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS) and not name.startswith(".")


def walk_images(folder: str) -> Iterator[str]:
    """Every image file under ``folder``, recursively, by ``os.scandir`` (no per-file ``stat``), sorted per folder."""
    with os.scandir(folder) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=True):
            yield from walk_images(entry.path)
        elif _is_image(entry.name):
            yield entry.path


def list_folder(folder: Path, unlabeled: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """``(files [(path, label)], class_names)`` of ``folder``: one class per subfolder, or, with images directly
    in ``folder`` (or ``unlabeled``), every image under it with label ``-1`` and no classes."""
    try:
        with os.scandir(folder) as entries:
            top = sorted(entries, key=lambda e: e.name)
    except OSError as exn:
        raise SourceError(f"folder:{folder}: cannot list it ({exn.strerror})") from None
    classes = [e.name for e in top if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")]
    loose = [e.name for e in top if e.is_file() and _is_image(e.name)]
    if loose and classes and not unlabeled:
        raise SourceError(f"folder:{folder}: images ({loose[0]}, ...) beside class subfolders ({classes[0]}, ...); "
                          "move them into a class folder, or pass --unlabeled to take every image without labels")
    if unlabeled or loose:
        return [(path, -1) for path in walk_images(str(folder))], []
    files = [(path, label) for label, name in enumerate(classes) for path in walk_images(str(folder / name))]
    return files, classes


def read_list_file(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``(files, class_names)`` of a list file: one ``PATH_OR_URL`` per line, optionally followed by a tab and a
    class name (then every line needs one); relative paths are relative to the list file."""
    try:
        lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    except OSError as exn:
        raise SourceError(f"list:{path}: cannot read it ({exn.strerror})") from None
    rows = [line.split("\t") for line in lines]
    labeled = [len(row) > 1 for row in rows]
    if any(labeled) and not all(labeled):
        first = labeled.index(not labeled[0]) + 1
        raise SourceError(f"list:{path}: line {first} differs from line 1 in having a class (PATH<TAB>CLASS); "
                          "give every line a class or none")
    classes = sorted({row[1] for row in rows}) if rows and labeled[0] else []
    index = {name: i for i, name in enumerate(classes)}

    def where(item: str) -> str:
        return item if "://" in item or Path(item).is_absolute() else str(path.parent / item)

    return [(where(row[0]), index[row[1]] if classes else -1) for row in rows], classes


def _stats(image: Image.Image, height: int, width: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Channel sums of a reduced decode, weighted as the ``height x width`` pixels of the stored photo."""
    pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0
    weight = height * width / len(pixels)
    return height * width, pixels.sum(0) * weight, (pixels**2).sum(0) * weight


def _encode(image: Image.Image, lossless: bool) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if lossless:
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), "png"
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), "jpg"


def prepare_photo(location: str, max_side: int, lossless: bool = False) -> Prepared:
    """The sample for one source file (see the module docstring); raises :class:`PhotoError` saying why a file
    cannot be used."""
    try:
        data = storage.read_bytes(location)
    except OSError as exn:
        raise PhotoError(f"cannot read ({exn.strerror or exn})") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            keep = (image.format == "JPEG" and image.mode == "RGB" and max(width, height) <= max_side
                    and image.getexif().get(ORIENTATION, 1) == 1)
            if keep:  # checked (and measured) by a DCT-scaled decode of the whole stream
                image.draft("RGB", (STATS_SIDE, STATS_SIDE))
                return Prepared(data, "jpg", height, width, *_stats(image.convert("RGB"), height, width))
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # (never enlarges)
            stored, ext = _encode(image, lossless)
            width, height = image.size
            image.thumbnail((STATS_SIDE, STATS_SIDE), Image.Resampling.BILINEAR)
            return Prepared(stored, ext, height, width, *_stats(image, height, width))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exn:
        raise PhotoError(f"not a readable image ({exn})") from None


def photo_files(
    spec: str, *, unlabeled: bool = False, test_fraction: float = 0.1, seed: int = 0
) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """``(files per split, class_names)`` of ``folder:PATH`` or ``list:FILE``. A folder with ``train`` and
    ``test`` (or ``val``) subfolders gives those splits; otherwise a labeled source holds out a seeded
    ``test_fraction`` as ``test`` and an unlabeled one is all ``train`` (evaluate it on labeled shards,
    ``eval.shards``)."""
    kind, _, where = spec.partition(":")
    path = Path(where)
    if kind == "list":
        files, classes = read_list_file(path)
        splits = {"train": files}
    else:
        if not path.is_dir():
            raise SourceError(f"folder:{path}: no such directory")
        test = path / "test" if (path / "test").is_dir() else path / "val"
        if (path / "train").is_dir() and test.is_dir():
            files, classes = list_folder(path / "train", unlabeled)
            test_files, test_classes = list_folder(test, unlabeled)
            if test_classes != classes:
                raise SourceError(f"folder:{path}: {test.name}/ has classes {test_classes[:5]}..., train/ has "
                                  f"{classes[:5]}...; give both the same class subfolders")
            splits = {"train": files, "test": test_files}
        else:
            files, classes = list_folder(path, unlabeled)
            splits = {"train": files}
    if classes and len(splits) == 1 and test_fraction > 0:
        splits = hold_out(files, test_fraction, seed)
    return splits, classes
