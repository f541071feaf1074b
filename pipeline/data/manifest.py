"""``manifest.json``: what a shard folder holds, written last so that its presence means the shards are whole."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import fsspec

from pipeline import storage
from pipeline.errors import ShardError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: arrays only, no layout, image sizes or rejects
Layout = Literal["arrays", "photos"]


@dataclass(frozen=True)
class ShardInfo:
    name: str
    num_samples: int
    bytes: int
    sha256: str
    class_counts: tuple[int, ...] = ()  # samples per class (labels index class_names); () in older manifests


@dataclass(frozen=True)
class SplitInfo:
    num_samples: int
    shards: tuple[ShardInfo, ...]

    @property
    def counts(self) -> list[int]:
        return [shard.num_samples for shard in self.shards]

    def counts_without(self, classes: tuple[int, ...], origin: str) -> list[int]:
        """Samples per shard once ``classes`` are left out (from the shards' per-class counts)."""
        if not classes:
            return self.counts
        if any(not shard.class_counts for shard in self.shards):
            raise ShardError(
                f"{origin}: the manifest has no per-class counts (an older sslpipe wrote it); re-create the shards "
                "with `sslpipe shard --overwrite`"
            )
        return [shard.num_samples - sum(shard.class_counts[c] for c in classes) for shard in self.shards]


@dataclass(frozen=True)
class Manifest:
    """Contents of a shard folder.

    ``layout``: ``arrays`` are fixed-size images, ``image_shape`` ``(C, H, W)`` as the loader yields them;
    ``photos`` keep their (JPEG) file bytes, ``image_shape`` is ``(3,)`` and ``image_sizes`` summarises their
    sizes; ``rejects`` lists the source files left out (``{"file", "reason"}``). No ``class_names``: unlabeled.
    """

    source: dict
    splits: dict[str, SplitInfo]
    image_shape: tuple[int, ...]
    encoding: str
    images_per_member: int
    class_names: tuple[str, ...]
    channel_mean: tuple[float, ...]
    channel_std: tuple[float, ...]
    order_seed: int
    created: str
    writer_version: str
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)
    layout: Layout = "arrays"
    image_sizes: dict = field(default_factory=dict)
    rejects: tuple[dict, ...] = ()

    @property
    def photos(self) -> bool:
        return self.layout == "photos"

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    @property
    def labeled(self) -> bool:
        return bool(self.class_names)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ShardError(f"{MANIFEST} has no split {name!r}; it has {', '.join(self.splits)}")
        return self.splits[name]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def digest(self) -> str:
        """sha256 of the manifest's content, naming this exact data set (shard hashes included)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str, origin: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exn:
            raise ShardError(f"{origin}: not valid JSON ({exn}); re-run `sslpipe shard`") from exn
        try:
            splits = {
                name: SplitInfo(
                    split["num_samples"],
                    tuple(
                        ShardInfo(**{**shard, "class_counts": tuple(shard.get("class_counts", ()))})
                        for shard in split["shards"]
                    ),
                )
                for name, split in raw.pop("splits").items()
            }
            manifest = cls(splits=splits, **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        except (KeyError, TypeError) as exn:
            raise ShardError(f"{origin}: missing or unexpected field {exn}; re-run `sslpipe shard`") from exn
        if manifest.format_version not in READABLE_VERSIONS:
            raise ShardError(f"{origin}: format version {manifest.format_version}, this sslpipe reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}; upgrade sslpipe or re-run `sslpipe shard`")
        return manifest


def read_manifest(location: str | Path) -> Manifest:
    """The manifest of a shard folder or URL prefix, with a clear error when it is absent."""
    url = storage.join(location, MANIFEST)
    if storage.is_local(location):
        folder = storage.local_path(location)
        if not folder.is_dir():
            raise ShardError(f"shard directory {folder} does not exist; create it with `sslpipe shard SOURCE --out {folder}`")
        if not Path(url).is_file():
            raise ShardError(
                f"{url} not found: {folder} is not a finished shard directory; (re)create it with `sslpipe shard`"
            )
    try:
        text = storage.read_bytes(url).decode()
    except FileNotFoundError as exn:
        raise ShardError(f"{url} not found; (re)create the shards with `sslpipe shard SOURCE --out {location}`") from exn
    return Manifest.from_json(text, url)


def write_manifest(manifest: Manifest, location: str | Path) -> None:
    with storage.atomic_writer(location, MANIFEST) as handle:
        handle.write(manifest.to_json().encode())


def sha256_of(url: str) -> str:
    digest = hashlib.sha256()
    with fsspec.open(url, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_local_shards(location: str | Path, manifest: Manifest, split: str) -> None:
    """Cheap check before reading: every shard of ``split`` exists with the size the manifest records."""
    if not storage.is_local(location):
        return
    for shard in manifest.split(split).shards:
        path = Path(storage.join(location, shard.name))
        if not path.is_file():
            raise ShardError(f"{path}: shard listed in {MANIFEST} is missing; re-run `sslpipe shard`")
        size = path.stat().st_size
        if size != shard.bytes:
            raise ShardError(
                f"{path}: {size} bytes but {MANIFEST} records {shard.bytes}; the shard is truncated or was replaced, "
                "re-run `sslpipe shard`"
            )


def verify_shards(location: str | Path, manifest: Manifest) -> None:
    """Full check of every shard's sha256 against the manifest (reads every byte)."""
    for split in manifest.splits:
        check_local_shards(location, manifest, split)
        for shard in manifest.splits[split].shards:
            url = storage.join(location, shard.name)
            if sha256_of(url) != shard.sha256:
                raise ShardError(f"{url}: sha256 does not match {MANIFEST}; the shard is corrupt, re-run `sslpipe shard`")
