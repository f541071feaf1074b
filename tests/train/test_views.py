"""Where a training batch becomes its views: the loader on CPUs, the GPU itself for photos on a GPU."""

import pytest
import torch

from pipeline.config import load_config
from pipeline.data import ShardLoader, read_manifest
from pipeline.data.decode import EncodedImages, PhotoViews, decode_images, decodes_on_device, device_reads, every_photo
from pipeline.errors import ShardError
from pipeline.train.views import TrainingViews


def test_photos_decode_on_the_gpu_there_and_in_the_loader_on_cpus(labeled_photo_shards, synthetic_shards):
    photos = read_manifest(labeled_photo_shards)

    def views(device, *overrides):
        config = load_config(None, [f"data.shards={labeled_photo_shards}", "data.image_size=32", *overrides])
        return TrainingViews(config, photos, 2, torch.device(device), rank=0)

    on_gpu = views("cuda", "data.decode=device")
    assert on_gpu.loader_options()["encoded"] is device_reads and on_gpu.loader_options()["transform"] is None
    loader_decodes = views("cuda", "data.decode=loader")  # a GPU without a JPEG engine: the loader decodes and crops
    options = loader_decodes.loader_options()
    assert options["encoded"] is None and options["transform"] is None and not loader_decodes.in_loader
    on_cpu = views("cpu", "data.decode=device")  # (a CPU has no device decoder: its loader decodes and augments)
    options = on_cpu.loader_options()
    assert options["encoded"] is None and options["transform"] == on_cpu.loader_augmenter.stacked
    arrays = TrainingViews(
        load_config(None, [f"data.shards={synthetic_shards}"]),
        read_manifest(synthetic_shards),
        2,
        torch.device("cuda"),
        rank=0,
    )
    assert not arrays.decode_on_device and arrays.loader_options()["transform"] is None


@pytest.mark.parametrize(
    ("decode", "device", "capability", "on_device"),
    [
        ("auto", "cuda", (9, 0), True),  # H100, H200: NVJPG engines
        ("auto", "cuda", (8, 0), True),  # A100
        ("auto", "cuda", (8, 6), False),  # A10G: CUDA cores and one host thread per batch; the loader is faster
        ("auto", "cuda", (7, 5), False),  # T4
        ("device", "cuda", (7, 5), True),
        ("loader", "cuda", (9, 0), False),
        ("device", "cpu", None, False),
    ],
)
def test_auto_decodes_on_the_gpu_where_it_has_a_jpeg_engine(decode, device, capability, on_device):
    assert decodes_on_device(decode, torch.device(device), capability) == on_device


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
    images, labels, indices = next(iter(loader))
    assert images.shape == (8, 2, 3, 32, 32) and images.dtype == torch.float32
    views, same_labels, skipped = on_cpu(images, labels, indices)
    assert len(views) == 2 and torch.equal(views[0], images[:, 0])  # already augmented in the loader
    assert torch.equal(same_labels, labels) and skipped == []
    # the GPU path, run on the CPU: bytes in, crops cut and augmented by the training process
    device_side = TrainingViews(config, photos, 2, torch.device("cpu"), rank=0)
    device_side.in_loader = False
    encoded = EncodedImages.pack(_jpegs(labeled_photo_shards, 4))
    made, _, _ = device_side(encoded, torch.arange(4), torch.arange(4))
    assert len(made) == 2 and made[0].shape == (4, 3, 32, 32) and made[0].min() >= 0 and made[0].max() <= 1
    assert device_side.decode_s > 0 and device_side.decoded == {"host": 4}  # (the data path's time, measured)


def _device_side(shards, *overrides):
    """The GPU path's views (bytes in, decoded and cropped by the training process), run on the CPU."""
    config = load_config(None, [f"data.shards={shards}", "data.image_size=32", *overrides])
    views = TrainingViews(config, read_manifest(shards), 2, torch.device("cpu"), rank=0)
    views.in_loader = False
    return views


def test_a_photo_the_training_process_cannot_decode_is_skipped_or_stops_the_run_naming_it(labeled_photo_shards):
    """As the loader does on CPUs: with data.skip_bad_samples the photo is left out (its label too) and counted,
    else one line names the sample."""
    blobs = _jpegs(labeled_photo_shards, 4)
    blobs[2] = blobs[2][: len(blobs[2]) // 3]  # a truncated JPEG
    encoded, labels, indices = EncodedImages.pack(blobs), torch.tensor([5, 6, 7, 8]), torch.tensor([40, 41, 42, 43])
    views, kept, skipped = _device_side(labeled_photo_shards, "data.skip_bad_samples=true")(encoded, labels, indices)
    assert views[0].shape == (3, 3, 32, 32) and kept.tolist() == [5, 6, 8]
    assert [(s.count, s.reason.split(" (")[0]) for s in skipped] == [(1, "photo 42 cannot be decoded")]
    with pytest.raises(ShardError, match=r"^photo 42 cannot be decoded \(.*\); re-create the shards"):
        _device_side(labeled_photo_shards)(encoded, labels, indices)


def test_a_failed_batch_decode_is_redone_photo_by_photo_and_names_the_bad_one(labeled_photo_shards):
    """One bad file fails a batched decode: the photos are then decoded one by one, so the good ones decode and the
    error comes at the bad one's position (it came at position 0, and ``embed`` dropped a good photo for it)."""
    blobs = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in _jpegs(labeled_photo_shards, 4)]
    blobs[2] = blobs[2][: len(blobs[2]) // 3]
    images = decode_images(blobs, torch.device("cpu"), batched=True)
    assert [next(images).shape[0] for _ in range(2)] == [3, 3]
    with pytest.raises(RuntimeError):
        next(images)


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
        encoded=every_photo,
    )
    return [blob.numpy().tobytes() for blob in next(iter(loader))[0].blobs()]
