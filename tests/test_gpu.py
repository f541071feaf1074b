"""`make gpu-check`: every method end to end on a GPU, photos at 224 px decoded on the device. `make gpu-check`
refuses to start without CUDA (elsewhere these tests are skipped); on a GPU machine it runs in a few minutes and
prints images/s and data wait per method. The photos are of every kind a folder holds: baseline and progressive
JPEGs, PNGs and CMYK JPEGs (converted when sharded), and two damaged after sharding (skipped and counted); where
they were decoded is measured, not read from the config. CPU and GPU outputs are compared with TF32 off, so the
tolerance is float32's."""

import os

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from benchmarks.photo_folder import make_photo_folder
from pipeline.commands.pretrain import pretrain
from pipeline.config import load_config, with_values
from pipeline.data.decode import decodes_on_device
from pipeline.data.photo_shards import write_photo_shards
from pipeline.data.photos import photo_files
from pipeline.export import load_encoder
from pipeline.track.tracker import fluent_api_at
from tests.helpers import rewrite_shard

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

METHODS = {  # overrides; SimCLR with the ResNet-50 of the papers
    "simclr": {"model.encoder": "resnet50"},
    "byol": {"method.name": "byol", "augment.preset": "byol", "model.encoder": "resnet18"},
    "byol-vit": {"method.name": "byol", "augment.preset": "byol", "model.encoder": "timm:vit_small_patch16_224"},
    "autoencoder": {"method.name": "autoencoder", "augment.preset": "none", "method.bottleneck": 64},
    "vae": {"method.name": "vae", "augment.preset": "none", "method.bottleneck": 32},
    "mae": {"method.name": "mae", "augment.preset": "crop", "model.encoder": "timm:vit_small_patch16_224"},
    "dino": {"method.name": "dino", "augment.preset": "byol", "model.encoder": "timm:vit_small_patch16_224"},
}


DAMAGED = 2


@pytest.fixture(autouse=True)
def _float32_matmuls():
    """cuDNN convolutions default to TF32 (10-bit mantissa): CPU/GPU agreement is checked in float32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _other_kinds(folder):
    """Every 10th training photo re-saved as a progressive JPEG, a PNG or a CMYK JPEG."""
    for i, path in enumerate(sorted((folder / "train").rglob("*.jpg"))[::10]):
        image = Image.open(path).convert("RGB")
        if i % 3 == 0:
            image.save(path, quality=90, progressive=True)
        elif i % 3 == 1:
            path.unlink()
            image.save(path.with_suffix(".png"))
        else:
            image.convert("CMYK").save(path, quality=90)


@pytest.fixture(scope="module")
def gpu_photos(tmp_path_factory):
    folder = make_photo_folder(tmp_path_factory.mktemp("folder"), 40, 10, max_side=1024)
    _other_kinds(folder)
    out = tmp_path_factory.mktemp("shards")
    files, classes = photo_files(f"folder:{folder}")
    write_photo_shards(
        files, classes, out, source={"name": "gpu-check"}, samples_per_shard=64, workers=4, progress=False
    )
    damaged = []

    def damage(name, data):  # the scan data of the shard's first photos zeroed, their headers kept
        if name.endswith(".jpg") and len(damaged) < DAMAGED:
            damaged.append(name)
            return data[:400] + bytes(len(data) - 400)
        return data

    rewrite_shard(out, "train-000000.tar", damage)
    return out


@pytest.mark.parametrize("name", METHODS)
def test_method_on_gpu(ray_local, gpu_photos, tmp_path, workdir, name):
    config = load_config(
        None,
        [
            f"data.shards={gpu_photos}",
            "data.image_size=224",
            "data.batch_size=64",
            "data.num_workers=4",
            "data.skip_bad_samples=true",
            "train.use_gpu=true",
            f"train.num_workers={torch.cuda.device_count()}",
            f"train.cpus_per_worker={min(4, os.cpu_count() // torch.cuda.device_count())}",
            "train.epochs=3",
            "train.max_steps_per_epoch=12",
            f"train.name=gpu-{name}",
            "eval.baselines=false",
            "eval.batch_size=256",
        ],
    )
    summary = pretrain(with_values(config, METHODS[name], "gpu-check"))
    client = MlflowClient(summary.tracking_uri)
    losses = [m.value for m in sorted(client.get_metric_history(summary.run_id, "loss"), key=lambda m: m.step)]
    metrics = summary.train_metrics
    print(
        f"\n{name}: {metrics['images_per_s']:,.0f} images/s, data wait {100 * metrics['data_wait_fraction']:.0f}%,"
        f" loss {' -> '.join(f'{v:.4f}' for v in losses)}, probe {summary.metrics['probe_accuracy']:.4f}"
    )
    if name != "dino":  # (DINO's loss may rise as its teacher sharpens: tests/train/test_models.py shows it learn)
        assert losses[-1] < losses[0], f"{name}: the loss did not fall: {losses}"
    # with a JPEG engine (data.decode auto) nvJPEG in the training process read the baseline JPEGs and the loader
    # processes the progressive ones (one in 30 photos: sharding converts PNG and CMYK to baseline JPEGs); without
    # one the loader processes read them all; the damaged ones were left out and counted wherever an epoch met them
    on_device = decodes_on_device("auto", torch.device("cuda"))
    share = metrics["photos_decoded_on_device"]
    assert (0.85 < share < 1.0) if on_device else share == 0.0, share
    skipped = [m.value for m in client.get_metric_history(summary.run_id, "skipped_samples")]
    assert sum(skipped) >= 1 and max(skipped) <= DAMAGED, skipped  # (each epoch reads ~85% of the photos)
    encoder = load_encoder(summary.export_dir).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        on_cpu = encoder(x)
        on_gpu = encoder.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)
    with fluent_api_at(summary.tracking_uri):
        registered = mlflow.pytorch.load_model(summary.model_uri).eval().to("cuda")  # as people call it
    with torch.no_grad():
        torch.testing.assert_close(registered(x.cuda()).cpu(), on_cpu, atol=1e-4, rtol=1e-4)
