"""Data path: sources -> WebDataset tar shards + manifest -> per-rank uint8 batch streams."""

from pipeline.data.array_shards import write_shards
from pipeline.data.loader import LabeledShards, ShardLoader, evaluation_loader
from pipeline.data.manifest import Manifest, read_manifest
from pipeline.data.sources import open_source

__all__ = ["LabeledShards", "Manifest", "ShardLoader", "evaluation_loader", "open_source", "read_manifest",
           "write_shards"]
