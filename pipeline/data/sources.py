"""Image sources that ``sslpipe shard`` turns into shards: IDX data sets, CIFAR-10, image folders, synthetic data.

Every source gives splits of ``(images (n, H, W, C) uint8, labels (n,) int64)`` loaded by index, so the writer
can store them in a seeded random order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.idx import read_idx
from pipeline.errors import SourceError

SOURCES = ("fashion-mnist", "mnist", "cifar10", "folder:PATH", "synthetic")
TORCHVISION_ROOT = Path(os.environ.get("SSLPIPE_TORCHVISION_ROOT", Path.home() / ".cache" / "sslpipe" / "torchvision"))


@dataclass
class SourceSplit:
    """One split of a source; ``load(indices)`` returns ``(images (n, H, W, C) uint8, labels (n,) int64)``."""

    num_samples: int
    image_shape: tuple[int, int, int]
    load: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Source:
    name: str
    splits: dict[str, SourceSplit]
    class_names: list[str]
    details: dict = field(default_factory=dict)


def array_split(images: np.ndarray, labels: np.ndarray) -> SourceSplit:
    """A split held in memory: ``images (N, H, W)`` or ``(N, H, W, C)`` uint8, ``labels (N,)``."""
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray(labels, dtype=np.int64)
    return SourceSplit(len(images), tuple(images.shape[1:]), lambda idx: (images[idx], labels[idx]))


# --- MNIST and Fashion-MNIST (IDX files) ---------------------------------------------------------------------

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_SETS = {
    "fashion-mnist": ("FashionMNIST", Path("/usr/share/datasets/fashion-mnist"), "dataset-fashion-mnist"),
    "mnist": ("MNIST", Path("/usr/share/datasets/mnist"), "dataset-mnist"),
}


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_dir(name: str, root: Path | None, download: bool) -> Path:
    """The first folder holding all four IDX files: ``root``, Debian's package, the torchvision root."""
    tv_name, system_dir, package = _IDX_SETS[name]
    candidates = [root, root / tv_name / "raw"] if root else []
    candidates += [system_dir, TORCHVISION_ROOT / tv_name / "raw"]
    stems = [stem for pair in _IDX_FILES.values() for stem in pair]
    for directory in candidates:
        if all(_find_idx(directory, stem) for stem in stems):
            return directory
    searched = ", ".join(str(c) for c in candidates)
    if not download:
        raise SourceError(f"{name}: IDX files not found in {searched}; pass --root DIR or `apt-get install {package}`")
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, tv_name)(str(TORCHVISION_ROOT), train=True, download=True)
    except Exception as exn:  # noqa: BLE001 - any network failure means the same thing to the user
        raise SourceError(
            f"{name}: IDX files not found in {searched} and the download failed ({exn}); "
            f"pass --root DIR holding train-images-idx3-ubyte.gz etc., or `apt-get install {package}`"
        ) from exn
    return TORCHVISION_ROOT / tv_name / "raw"


def idx_source(name: str, root: Path | None, download: bool = True) -> Source:
    directory = _idx_dir(name, root, download)
    splits = {}
    for split, (image_stem, label_stem) in _IDX_FILES.items():
        images = read_idx(_find_idx(directory, image_stem))
        labels = read_idx(_find_idx(directory, label_stem))
        if len(images) != len(labels):
            raise SourceError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
        splits[split] = array_split(images, labels)
    classes = [str(i) for i in range(10)]
    if name == "fashion-mnist":
        classes = "T-shirt/top Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag Ankle-boot".split()
    return Source(name, splits, classes, {"root": str(directory)})


# --- CIFAR-10 (torchvision) -----------------------------------------------------------------------------------


def cifar10_source(root: Path | None, download: bool = True) -> Source:
    import torchvision.datasets

    root = root or TORCHVISION_ROOT
    splits = {}
    for split in ("train", "test"):
        try:
            data = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=False)
        except RuntimeError:
            if not download:
                raise SourceError(f"cifar10: not found under {root}; pass --root DIR") from None
            try:
                data = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=True)
            except Exception as exn:  # noqa: BLE001
                raise SourceError(f"cifar10: not found under {root} and the download failed ({exn})") from exn
        splits[split] = array_split(np.asarray(data.data), np.asarray(data.targets))
    return Source("cifar10", splits, list(data.classes), {"root": str(root)})


# --- Image folders ----------------------------------------------------------------------------------------------


def _load_image(path: str, mode: str, size: int | None, expected: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if size:
                image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
            elif expected and image.size[::-1] != expected:
                raise SourceError(
                    f"{path}: {image.size[1]}x{image.size[0]} pixels but earlier images are {expected[0]}x{expected[1]};"
                    " pass --image-size N to resize and center-crop every image"
                )
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError) as exn:
        raise SourceError(f"{path}: cannot read image ({exn}); remove or replace the file") from exn
    return array[..., None] if array.ndim == 2 else array


def hold_out(items: list, fraction: float, seed: int) -> dict[str, list]:
    """``{"train": ..., "test": ...}``: a seeded ``fraction`` of ``items`` held out as the test split, both in
    their original order."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = int(round(len(order) * fraction))
    return {"train": [items[i] for i in sorted(order[n_test:])], "test": [items[i] for i in sorted(order[:n_test])]}


def folder_source(path: Path, image_size: int | None, channels: int, test_fraction: float, seed: int) -> Source:
    """An ImageFolder tree (label = subfolder); ``PATH/train`` and ``PATH/test`` (or ``val``) give the splits,
    else a seeded ``test_fraction`` of the tree is held out as the test split."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not path.is_dir():
        raise SourceError(f"folder:{path}: no such directory")
    split_dirs = {"train": path / "train", "test": path / "test" if (path / "test").is_dir() else path / "val"}
    if not all(d.is_dir() for d in split_dirs.values()):
        split_dirs = {"train": path}
    try:
        classes, class_to_idx = find_classes(str(split_dirs["train"]))
        items = {s: make_dataset(str(d), class_to_idx, IMG_EXTENSIONS) for s, d in split_dirs.items()}
    except (FileNotFoundError, OSError) as exn:
        raise SourceError(f"folder:{path}: {exn}") from exn
    if len(split_dirs) == 1:
        items = hold_out(items["train"], test_fraction, seed)
    mode = {1: "L", 3: "RGB"}[channels]
    first = _load_image(items["train"][0][0], mode, image_size, None)
    height, width = first.shape[:2]

    def split(entries: list[tuple[str, int]]) -> SourceSplit:
        def load(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            images = [_load_image(entries[i][0], mode, image_size, (height, width)) for i in indices]
            return np.stack(images), np.array([entries[i][1] for i in indices], dtype=np.int64)

        return SourceSplit(len(entries), (height, width, channels), load)

    return Source(f"folder:{path}", {s: split(e) for s, e in items.items()}, classes, {"root": str(path)})


# --- Synthetic --------------------------------------------------------------------------------------------------


def synthetic_source(
    num_train: int, num_test: int, image_size: int, channels: int, num_classes: int, seed: int
) -> Source:
    """Class-dependent oriented gratings with random phase, contrast and noise: learnable, yet not trivial."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, np.pi, num_classes)
    frequencies = rng.uniform(1.5, 4.0, num_classes)
    tints = rng.uniform(0.4, 1.0, (num_classes, channels))
    grid = np.linspace(-1, 1, image_size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    def generate(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, n)
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        projection = np.cos(angles[labels])[:, None, None] * xx + np.sin(angles[labels])[:, None, None] * yy
        wave = 0.5 + 0.4 * np.sin(np.pi * frequencies[labels][:, None, None] * projection + phase)
        images = wave[..., None] * tints[labels][:, None, None, :] + rng.normal(0, 0.08, (n, image_size, image_size, 1))
        return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels

    splits = {"train": array_split(*generate(num_train)), "test": array_split(*generate(num_test))}
    details = dict(num_train=num_train, num_test=num_test, image_size=image_size, channels=channels, seed=seed)
    return Source("synthetic", splits, [f"class{i}" for i in range(num_classes)], details)


def open_source(
    spec: str,
    root: Path | None = None,
    *,
    download: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    num_train: int = 2048,
    num_test: int = 512,
    num_classes: int = 10,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Source:
    """Resolve a source name as given on the command line; see :data:`SOURCES`."""
    if spec in _IDX_SETS:
        return idx_source(spec, root, download)
    if spec == "cifar10":
        return cifar10_source(root, download)
    if spec.startswith("folder:"):
        return folder_source(Path(spec[len("folder:") :]), image_size, channels or 3, test_fraction, seed)
    if spec == "synthetic":
        return synthetic_source(num_train, num_test, image_size or 28, channels or 1, num_classes, seed)
    raise SourceError(f"unknown source {spec!r}: choose one of {', '.join(SOURCES)}")
