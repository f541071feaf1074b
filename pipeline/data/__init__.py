"""Data path: sources -> WebDataset tar shards + manifest -> per-rank uint8 batch streams."""

from pipeline.data.manifest import Manifest, read_manifest
from pipeline.data.shard import write_shards
from pipeline.data.sources import open_source
from pipeline.data.stream import ShardLoader, evaluation_loader

__all__ = ["Manifest", "ShardLoader", "evaluation_loader", "open_source", "read_manifest", "write_shards"]
