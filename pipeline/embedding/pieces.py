"""What ``sslpipe embed`` embeds, cut into pieces of work in data order: a shard location (folder or URL with
``manifest.json``) in pieces of at most a shard, or a folder of images (``folder:PATH`` or a plain directory,
labeled by subfolder or not at all, with optional ``train``/``test`` subfolders as ``sslpipe shard`` reads it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.data import read_manifest
from pipeline.data.manifest import MANIFEST, check_local_shards
from pipeline.data.photos import photo_files
from pipeline.errors import ConfigError, SslpipeError


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


def plan_data(data: str, split: str | None = None, piece_size: int = 1024) -> Plan:
    """``data`` cut into pieces of at most ``piece_size`` images (never across shards), in data order."""
    if piece_size < 1:
        raise ConfigError(f"piece_size must be >= 1, got {piece_size}")
    if data.startswith("folder:"):
        return _plan_folder(Path(data[len("folder:") :]), split, piece_size)
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
        pieces += [
            FileWork(name if named else None, tuple(entries[i : i + piece_size]))
            for i in range(0, len(entries), piece_size)
        ]
    return Plan(pieces, tuple(classes), sum(p.count for p in pieces))
