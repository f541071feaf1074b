"""Where a training batch becomes its views: the loader on CPUs, the GPU itself for photos on a GPU."""

import torch

from pipeline.config import load_config
from pipeline.data import ShardLoader, read_manifest
from pipeline.data.decode import EncodedImages, PhotoViews
from pipeline.train.views import TrainingViews


def test_photos_decode_on_the_gpu_there_and_in_the_loader_on_cpus(labeled_photo_shards, synthetic_shards):
    config = load_config(None, [f"data.shards={labeled_photo_shards}", "data.image_size=32"])
    photos = read_manifest(labeled_photo_shards)
    on_gpu = TrainingViews(config, photos, 2, torch.device("cuda"), rank=0)
    assert on_gpu.loader_options()["decode_on_device"] and on_gpu.loader_options()["transform"] is None
    on_cpu = TrainingViews(config, photos, 2, torch.device("cpu"), rank=0)
    options = on_cpu.loader_options()
    assert not options["decode_on_device"] and options["transform"] == on_cpu.loader_augmenter.stacked
    arrays = TrainingViews(
        load_config(None, [f"data.shards={synthetic_shards}"]),
        read_manifest(synthetic_shards),
        2,
        torch.device("cuda"),
        rank=0,
    )
    assert not arrays.decode_on_device and arrays.loader_options()["transform"] is None


def test_cpu_views_arrive_made_and_device_views_are_made_here(labeled_photo_shards):
    config = load_config(None, [f"data.shards={labeled_photo_shards}", "data.image_size=32"])
    photos = read_manifest(labeled_photo_shards)
    on_cpu = TrainingViews(config, photos, 2, torch.device("cpu"), rank=0)
    loader = ShardLoader(
        labeled_photo_shards,
        "train",
        8,
        rank=0,
        world_size=1,
        num_workers=0,
        manifest=photos,
        **on_cpu.loader_options(),
    )
    images, _, _ = next(iter(loader))
    assert images.shape == (8, 2, 3, 32, 32) and images.dtype == torch.float32
    views = on_cpu(images)
    assert len(views) == 2 and torch.equal(views[0], images[:, 0])  # already augmented in the loader
    # the GPU path, run on the CPU: bytes in, crops cut and augmented by the training process
    device_side = TrainingViews(config, photos, 2, torch.device("cpu"), rank=0)
    device_side.in_loader = False
    encoded = EncodedImages.pack(_jpegs(labeled_photo_shards, 4))
    made = device_side(encoded)
    assert len(made) == 2 and made[0].shape == (4, 3, 32, 32) and made[0].min() >= 0 and made[0].max() <= 1


def _jpegs(location, count):
    """The file bytes of the first ``count`` test photos."""
    loader = ShardLoader(
        location,
        "test",
        count,
        rank=0,
        world_size=1,
        num_workers=0,
        shuffle=False,
        drop_last=False,
        views=PhotoViews(32),
        decode_on_device=True,
    )
    return [blob.numpy().tobytes() for blob in next(iter(loader))[0].blobs()]
