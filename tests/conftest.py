"""Shared fixtures: shard folders written once per session, and one local Ray instance for the Ray tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.photo_folder import make_photo_folder
from pipeline.data import open_source, write_shards
from pipeline.data.photo_shards import write_photo_shards
from pipeline.data.photos import photo_files
from pipeline.data.sources import _IDX_SETS, Source, array_split
from pipeline.data.subset import balanced_subset

FASHION_DIR = _IDX_SETS["fashion-mnist"][1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``gpu`` marker is the one way a test says it needs CUDA: marked tests are skipped without a device, and
    ``make gpu-check`` (``-m gpu``) runs every one of them."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (`make gpu-check` on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3000 train samples in shards of 700 (the last one 200: uneven on purpose), 500 test samples."""
    out = tmp_path_factory.mktemp("synthetic")
    write_shards(open_source("synthetic", num_train=3000, num_test=500), out, samples_per_shard=700, progress=False)
    return out


@pytest.fixture(scope="session")
def even_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1024 train samples in 4 shards of 256: divisible by 2 ranks x 2 workers x batch 64."""
    out = tmp_path_factory.mktemp("even")
    source = open_source("synthetic", num_train=1024, num_test=128, seed=1)
    write_shards(source, out, samples_per_shard=256, images_per_member=32, progress=False)
    return out


@pytest.fixture(scope="session")
def fashion_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST not installed in {FASHION_DIR}: `apt-get install dataset-fashion-mnist`")
    out = tmp_path_factory.mktemp("fashion")
    write_shards(open_source("fashion-mnist", download=False), out, progress=False)
    return out


@pytest.fixture(scope="session")
def fashion_subset_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed Fashion-MNIST subset: 10,000 train images (1,000 per class, ``balanced_subset`` seed 0) and the
    whole 10,000-image test split, in shards of 2,500 (about a second to write)."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST not installed in {FASHION_DIR}: `apt-get install dataset-fashion-mnist`")
    full = open_source("fashion-mnist", download=False)
    splits = {}
    for name, keep in (("train", 10_000), ("test", 10_000)):
        images, labels = full.splits[name].load(np.arange(full.splits[name].num_samples))
        rows = balanced_subset(labels, keep / len(labels), seed=0)
        splits[name] = array_split(images[rows], labels[rows])
    out = tmp_path_factory.mktemp("fashion-subset")
    write_shards(Source(full.name, splits, full.class_names, full.details), out, samples_per_shard=2500, progress=False)
    return out


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos: 12 train and 4 test crops (256-640 px) of each of 8 photographs, in class subfolders."""
    return make_photo_folder(tmp_path_factory.mktemp("photo-folder"), 12, 4, classes=8, max_side=640)


def _photo_shards(out: Path, spec: str, unlabeled: bool) -> Path:
    files, classes = photo_files(spec, unlabeled=unlabeled)
    write_photo_shards(files, classes, out, source={"name": spec}, samples_per_shard=24, progress=False)
    return out


@pytest.fixture(scope="session")
def labeled_photo_shards(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``photo_folder`` as labeled photo shards (train and test splits)."""
    return _photo_shards(tmp_path_factory.mktemp("labeled-photos"), f"folder:{photo_folder}", unlabeled=False)


@pytest.fixture(scope="session")
def unlabeled_photo_shards(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train photos of ``photo_folder`` as unlabeled photo shards (one split, no classes)."""
    return _photo_shards(tmp_path_factory.mktemp("unlabeled-photos"), f"folder:{photo_folder / 'train'}", True)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session (started here, shut down here: exactly its own processes)."""
    ray = pytest.importorskip("ray")
    # the dashboard serves the state API that Ray Train's placement-group cleaner needs when Tune stops a trial
    ray.init(num_cpus=4, include_dashboard=True, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def synthetic_labels(num_train: int, num_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    source = open_source("synthetic", num_train=num_train, num_test=num_test, seed=seed)
    return {name: split.load(np.arange(split.num_samples))[1] for name, split in source.splits.items()}
