"""Shared fixtures: shard folders written once per session, and one local Ray instance for the Ray tests."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmarks.learning_gate import JOBS, fashion_subset, gate_overrides
from benchmarks.photo_folder import make_photo_folder
from pipeline.config import JobConfig, load_config
from pipeline.data import open_source, write_shards
from pipeline.data.photo_shards import write_photo_shards
from pipeline.data.photos import photo_files
from pipeline.data.sources import _IDX_SETS
from tests.helpers import GATE_SEED, copied_store

if TYPE_CHECKING:
    from pipeline.commands.pretrain import PretrainSummary

FASHION_DIR = _IDX_SETS["fashion-mnist"][1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiers, kept by construction: a test that starts Ray (through ``ray_local``) must be marked ``slow``, so
    ``make test-fast`` starts none; the ``gpu`` marker is the one way a test says it needs CUDA (skipped without a
    device; ``make gpu-check``, which selects them with ``-m gpu``, refuses to run without one instead of passing
    by skipping)."""
    if config.getoption("markexpr") == "gpu" and not torch.cuda.is_available():
        pytest.exit(no_cuda(), returncode=1)
    unmarked = [
        item.nodeid
        for item in items
        if "ray_local" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slow")
    ]
    if unmarked:
        raise pytest.UsageError(f"tests that start Ray must be marked slow: {', '.join(unmarked)}")
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (`make gpu-check` on a GPU machine)")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)
    # the tests on the session's local Ray run last, in their files' order: Ray starts for them and ends with the
    # session, instead of idling beside every other test (its processes take about a tenth of 2 cores at rest)
    items.sort(key=lambda item: "ray_local" in getattr(item, "fixturenames", ()))


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
    """The learning gate's fixed Fashion-MNIST subset (``benchmarks.learning_gate.fashion_subset``: 10,000 train
    images, 1,000 per class, and the whole test split; about a second to write)."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST not installed in {FASHION_DIR}: `apt-get install dataset-fashion-mnist`")
    return fashion_subset(tmp_path_factory.mktemp("fashion-subset"))


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
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow store with every migration applied: made once (about 4 s), copied for each test (ms)."""
    path = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, migrated_store: Path) -> str:
    """``sqlite:///<tmp_path>/mlflow.db``, a copy of the migrated empty store."""
    return copied_store(migrated_store, tmp_path)


@pytest.fixture
def workdir(tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working directory of a run: the default store ``./mlflow.db`` (the migrated copy),
    ``exports/`` and ``ray_results/`` land there."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def no_cuda() -> str:
    """One line on why torch sees no GPU and what to check."""
    return (
        f"gpu-check: torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no CUDA device: check "
        "`nvidia-smi`; CUDA 13 builds need NVIDIA driver 580 or newer"
    )


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session (started here, shut down here: exactly its own processes). Its
    workers inherit this process's environment as it is now: without a tracking URI that an earlier test left."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        # the dashboard serves the state API that Ray Train's placement-group cleaner needs when Tune stops a trial;
        # 4 CPUs (more than this 2-core machine has: the tests' jobs ask for 2-4), on a GPU machine all of them
        cpus = os.cpu_count() if torch.cuda.is_available() else 4
        ray.init(num_cpus=cpus, include_dashboard=True, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def synthetic_labels(num_train: int, num_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    source = open_source("synthetic", num_train=num_train, num_test=num_test, seed=seed)
    return {name: split.load(np.arange(split.num_samples))[1] for name, split in source.splits.items()}


@dataclass
class SharedRun:
    """One ``pretrain`` run that several tests assert on: its job, its summary, the per-epoch losses MLflow holds,
    what the driver evaluated (``method``, ``plan`` and the Ray Train workers' ``features``) and the temporary
    folder the run's own temporary folders went to."""

    config: JobConfig
    summary: PretrainSummary
    losses: list[float]
    evaluated: dict
    temp: Path


@pytest.fixture(scope="session")
def shipped_simclr(ray_local, fashion_subset_shards: Path, migrated_store: Path, tmp_path_factory) -> SharedRun:
    """The shipped SimCLR job with the learning gate's overrides (``benchmarks.learning_gate.gate_overrides``: the
    subset, two epochs, a 16-d representation, the random-init baseline) through ``pretrain`` on 2 Ray Train
    workers, registered, in a folder of its own as a user runs it: the learning gate and the end-to-end test of
    tracking and exports assert on this one run."""
    from pipeline.commands import pretrain as commands_pretrain  # (not at import: test-fast's start-up)

    folder = tmp_path_factory.mktemp("shipped-simclr")
    copied_store(migrated_store, folder)
    (folder / "tmp").mkdir()
    evaluated: dict = {}
    evaluate = commands_pretrain.evaluate_method

    def evaluate_and_keep(method, plan, out_dir, features=None):
        evaluated.update(method=method, plan=plan, features=features)
        return evaluate(method, plan, out_dir, features)

    config = load_config(
        JOBS / "simclr_fashion_mnist.yaml", gate_overrides(fashion_subset_shards, GATE_SEED, "gate-simclr")
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr(tempfile, "tempdir", str(folder / "tmp"))
        patch.setattr(commands_pretrain, "evaluate_method", evaluate_and_keep)
        summary = commands_pretrain.pretrain(config)
    history = MlflowClient(summary.tracking_uri).get_metric_history(summary.run_id, "loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    return SharedRun(config, summary, losses, evaluated, folder / "tmp")
