"""Nothing in a training step waits on the device: one step of every method, on arrays and on photos, in this
process on the CPU under the host-sync guard (``tests/sync_guard.py``: what would stall a CUDA stream shows on the
CPU too). The step's blur takes its device path here."""

import itertools

import pytest
import torch

from pipeline.config import load_config
from pipeline.train.harness import prepare
from pipeline.train.pretraining import Pretraining
from pipeline.train.session import InProcessSession
from tests.helpers import TINY_MAE, names_an_encoder
from tests.in_process import InProcess
from tests.sync_guard import HostSyncs

SMALL_CNN = ["model.width=4", "model.embed_dim=8"]
METHODS = {
    "simclr": [],
    "byol": ["method.name=byol", "optim.name=lars"],
    "autoencoder": ["method.name=autoencoder", "method.bottleneck=8", "augment.preset=none"],
    "denoising": ["method.name=autoencoder", "method.bottleneck=8", "method.corruption=mask", "augment.preset=none"],
    "vae": ["method.name=vae", "method.bottleneck=8", "augment.preset=none"],
    "mae": TINY_MAE,
    "dino": ["method.name=dino", "method.out_dim=64", "model.head_dim=16"],
}


@pytest.fixture(autouse=True)
def _device_paths(monkeypatch):
    monkeypatch.setattr("augment.blur.host_selects", lambda device: False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _prepared(shards, tmp_path, overrides, use_gpu=False):
    """A small job's training state on ``shards`` and its first two batches."""
    config = load_config(
        None,
        [
            f"data.shards={shards}",
            "data.batch_size=16",
            "data.num_workers=0",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
            *overrides,
        ],
    )
    session = InProcessSession(str(tmp_path), use_gpu=True) if use_gpu else InProcess(tmp_path)
    training = prepare(config, Pretraining(), session)
    training.loader.set_epoch(0)
    return training, list(itertools.islice(training.loader, 2))


def _second_step_syncs(shards, tmp_path, overrides) -> dict:
    """The guard's record of step 2 (step 1 makes the optimizer's lazy state) of a small job on ``shards``."""
    training, (first, second) = _prepared(shards, tmp_path, overrides)
    training.take_step(*first, 1)
    with HostSyncs() as syncs:
        training.take_step(*second, 2)
    return dict(syncs.seen)


def _on_arrays(method: str) -> list[str]:
    """``method``'s overrides for the arrays, a small CNN unless they name an encoder of their own."""
    own_encoder = names_an_encoder(METHODS[method])
    return [*([] if own_encoder else SMALL_CNN), *METHODS[method]]


@pytest.mark.parametrize("method", METHODS)
def test_a_step_on_arrays_waits_on_no_device(synthetic_shards, tmp_path, method):
    assert _second_step_syncs(synthetic_shards, tmp_path, _on_arrays(method)) == {}


def test_a_step_on_photos_waits_on_no_device(labeled_photo_shards, tmp_path):
    """Photos on a CPU arrive as views the loader made (decode, crops, augmentation: guarded in
    ``tests/augment``); the step moves them to the device without blocking and trains."""
    overrides = ["data.image_size=64", "model.encoder=resnet18", "train.amp=false"]
    assert _second_step_syncs(labeled_photo_shards, tmp_path, overrides) == {}


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_a_step_on_a_gpu_makes_no_synchronizing_call(synthetic_shards, labeled_photo_shards, tmp_path, method):
    """On the GPU itself, PyTorch's own check: every synchronizing CUDA call in step 2 raises (arrays; photos
    decoded, cropped and augmented on the device)."""
    cases = [(synthetic_shards, _on_arrays(method))]
    if method in ("simclr", "byol"):
        photos = ["data.image_size=64", "model.encoder=resnet18", "data.decode=device", *METHODS[method]]
        cases.append((labeled_photo_shards, photos))
    for number, (shards, overrides) in enumerate(cases):
        training, (first, second) = _prepared(shards, tmp_path / str(number), overrides, True)
        training.take_step(*first, 1)
        torch.cuda.set_sync_debug_mode("error")
        try:
            training.take_step(*second, 2)
        finally:
            torch.cuda.set_sync_debug_mode("default")
