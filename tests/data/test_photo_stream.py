"""Photo batches: crop geometry, decoders against PIL, epoch coverage across ranks with photos of many sizes."""

import collections
import io
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from augment import ViewAugmenter
from benchmarks.photo_folder import make_photo_folder
from pipeline.data import ShardLoader, evaluation_loader
from pipeline.data.decode import (
    EncodedImages,
    PhotoViews,
    batch_views,
    center_boxes,
    decode_images,
    device_reads,
    every_photo,
    photo_views,
    random_boxes,
    resized_crops,
)
from pipeline.data.photo_shards import write_photo_shards
from pipeline.data.photos import photo_files
from pipeline.errors import ConfigError, ShardError
from tests.helpers import rewrite_shard

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory):
    """46 train photos (256-700 px, some resized to 512) of 2 classes in 5 uneven shards, 10 test photos."""
    folder = make_photo_folder(tmp_path_factory.mktemp("folder"), 23, 5, classes=2, max_side=700)
    out = tmp_path_factory.mktemp("shards")
    files, classes = photo_files(f"folder:{folder}")
    write_photo_shards(files, classes, out, source={"name": "test"}, samples_per_shard=10, progress=False)
    return out


def test_random_boxes_follow_torchvisions_sampling():
    rng = np.random.default_rng(0)
    sizes = np.array([[300, 400]] * 4000)
    top, left, height, width = random_boxes(sizes, rng).T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 300).all() and (left + width <= 400).all()
    area = height * width / (300 * 400)
    assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
    aspect = width / height
    assert aspect.min() >= 3 / 4 - 0.02 and aspect.max() <= 4 / 3 + 0.02
    torch.manual_seed(0)  # torchvision's own sampler, on the same image size, for the distribution
    reference = np.array([RandomResizedCrop.get_params(torch.empty(3, 300, 400), [0.08, 1.0], [3 / 4, 4 / 3])
                          for _ in range(4000)])
    reference_area = reference[:, 2] * reference[:, 3] / (300 * 400)
    assert abs(np.median(area) - np.median(reference_area)) < 0.03
    assert abs(np.mean(area > 0.8) - np.mean(reference_area > 0.8)) < 0.03  # large draws that do not fit: retried
    reference_aspect = reference[:, 3] / reference[:, 2]
    assert abs(np.mean(np.log(aspect)) - np.mean(np.log(reference_aspect))) < 0.02  # log-uniform, wide boxes fit more
    assert len(set(zip(top.tolist(), left.tolist()))) > 3000  # positions vary


def test_random_boxes_fall_back_to_a_central_box_for_extreme_shapes():
    rng = np.random.default_rng(0)
    boxes = random_boxes(np.array([[10, 1000], [1000, 10]]), rng, scale=(0.9, 1.0))
    np.testing.assert_array_equal(boxes[:, 2:], [[10, 13], [13, 10]])  # ratio clamped to 4:3 and 3:4
    assert 0 <= boxes[0, 1] <= 1000 - 13 and boxes[0, 0] == 0 and boxes[1, 1] == 0


def test_center_boxes_are_the_resize_then_center_crop_region():
    np.testing.assert_array_equal(center_boxes(np.array([[256, 512], [300, 200]])),
                                  [[16, 144, 224, 224], [62, 12, 175, 175]])


def _ramp_png(height, width):
    """RGB image whose red channel is the column, green the row (for reading back where a crop came from)."""
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    image = np.stack([columns, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def test_center_crop_takes_the_central_region():
    (crop,) = photo_views([_ramp_png(200, 256)], PhotoViews(175), None, CPU)[:, 0]
    # the central 175 px square of a 200 x 256 image: columns 40..214, rows 12..186, no resize needed
    np.testing.assert_array_equal(crop[0, 0].numpy(), np.arange(40, 215))
    np.testing.assert_array_equal(crop[1, :, 0].numpy(), np.arange(12, 187))


def test_random_crops_cut_the_drawn_box_and_resize_it():
    blob = _ramp_png(240, 250)
    views = PhotoViews(32, count=2, random=True)
    crops = photo_views([blob], views, np.random.default_rng(5), CPU)[0].float()
    (top, left, height, width), second = random_boxes(np.array([[240, 250]] * 2), np.random.default_rng(5))
    assert crops.shape == (2, 3, 32, 32)
    # the resized crop spans the box: its mean column and row are the box's centre
    assert abs(crops[0, 0].mean() - (left + (width - 1) / 2)) < 1.0
    assert abs(crops[0, 1].mean() - (top + (height - 1) / 2)) < 1.0
    assert abs(crops[1, 0].mean() - (second[1] + (second[3] - 1) / 2)) < 1.0


def test_cpu_decoder_matches_pil_pixel_for_pixel(photo_shards):
    loader = ShardLoader(photo_shards, "test", 10, rank=0, world_size=1, num_workers=0, shuffle=False, drop_last=False,
                         views=PhotoViews(64), encoded=every_photo)
    encoded, _, _ = next(iter(loader))
    for blob, decoded in zip(encoded.blobs(), decode_images(encoded.blobs(), CPU)):
        expected = np.asarray(Image.open(io.BytesIO(blob.numpy().tobytes())).convert("RGB"))
        np.testing.assert_array_equal(decoded.permute(1, 2, 0).numpy(), expected)  # both libjpeg-turbo


@pytest.mark.gpu
def test_cuda_decoder_matches_the_cpu_decoder_within_jpeg_tolerance(photo_shards):
    loader = ShardLoader(photo_shards, "test", 10, rank=0, world_size=1, num_workers=0, shuffle=False, drop_last=False,
                         views=PhotoViews(64), encoded=every_photo)
    blobs = next(iter(loader))[0].blobs()
    for on_cpu, on_gpu in zip(decode_images(blobs, CPU), decode_images(blobs, torch.device("cuda"))):
        difference = (on_cpu.int() - on_gpu.cpu().int()).abs()
        assert difference.float().mean() < 1.0 and difference.max() <= 12  # nvJPEG's IDCT and upsampling differ


def _indices(location, rank, world_size, **options):
    loader = ShardLoader(location, "train", 8, rank=rank, world_size=world_size, num_workers=2,
                         views=PhotoViews(32, 2, random=True), **options)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches, torch.cat([b[2] for b in batches]).tolist()


@pytest.mark.parametrize("decode_on_device", [False, True])
def test_two_ranks_read_disjoint_photos_in_equal_batches(photo_shards, decode_on_device):
    seen = []
    for rank in range(2):
        batches, indices = _indices(photo_shards, rank, 2, encoded=device_reads if decode_on_device else None)
        for images, labels, _ in batches:
            if decode_on_device:  # (baseline JPEGs, every one: all travel undecoded)
                assert isinstance(images, EncodedImages) and images.data.shape[0] == 8 == len(images.lengths)
                assert all(bytes(b[:2].numpy()) == b"\xff\xd8" for b in images.blobs())
            else:
                assert images.shape == (8, 2, 3, 32, 32) and images.dtype == torch.uint8
            assert set(labels.tolist()) <= {0, 1}
        seen.append(indices)
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) > 0
    assert len(set(seen[0] + seen[1])) == len(seen[0] + seen[1]) <= 46


def test_evaluation_reads_every_photo_once_as_center_crops(photo_shards):
    batches = list(evaluation_loader(photo_shards, "train", 16, image_size=48))
    assert [b[0].shape for b in batches][-1][1:] == (3, 48, 48)
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(46))
    again = list(evaluation_loader(photo_shards, "train", 16, image_size=48))
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), torch.cat([b[0] for b in again]))


def test_photo_shards_need_a_crop_size(photo_shards):
    with pytest.raises(ConfigError, match="holds photos: give the size to crop them to"):
        ShardLoader(photo_shards, "train", 8)


def _damage_one_photo(location):
    """Zero the scan data of the first photo of ``train-000000.tar`` (its header kept); returns its index."""
    damaged = []

    def edit(name, data):
        if name.endswith(".jpg") and not damaged:
            damaged.append(int(name.split(".")[0].rsplit("-", 1)[1]))
            return data[:400] + bytes(len(data) - 400)
        return data

    rewrite_shard(location, "train-000000.tar", edit)
    return damaged[0]


def test_an_undecodable_photo_is_named_or_skipped_and_counted(photo_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(photo_shards, copy)
    index = _damage_one_photo(copy)
    views = PhotoViews(32, 2, random=True)
    with pytest.raises(ShardError, match=rf"photo {index} cannot be decoded .*data.skip_bad_samples=true"):
        list(ShardLoader(copy, "train", 8, rank=0, world_size=1, num_workers=1, views=views))
    loaders = [ShardLoader(copy, "train", 8, rank=r, world_size=2, num_workers=1, views=views, skip_bad_samples=True)
               for r in range(2)]
    counts = [len(list(loader)) for loader in loaders]
    assert counts[0] == counts[1] == len(loaders[0]) and sum(loader.skipped for loader in loaders) == 1


def test_augmenter_without_crop_makes_view_i_from_crop_i():
    crops = torch.stack([torch.zeros(4, 3, 16, 16), torch.ones(4, 3, 16, 16)], dim=1).to(torch.uint8) * 255
    dark, bright = ViewAugmenter("simclr", 16, 3, num_views=2, seed=0, crop=False)(crops)
    assert dark.shape == bright.shape == (4, 3, 16, 16)
    assert dark.mean() < 0.5 < bright.mean()


def test_a_shared_memory_too_small_for_the_batches_in_flight_is_one_clear_line(photo_shards, tmp_path):
    loader = ShardLoader(photo_shards, "train", 32, rank=0, world_size=1, num_workers=2, prefetch_factor=4,
                         views=PhotoViews(224, 2, random=True), transform=lambda crops: crops.float())
    assert loader.batch_bytes() == 32 * 2 * 3 * 224 * 224 * 4  # float views: 38 MB a batch
    small = tmp_path / "shm"
    small.mkdir()
    with mock.patch("shutil.disk_usage", return_value=shutil._ntuple_diskusage(64 << 20, 0, 64 << 20)):
        with pytest.raises(ConfigError, match=r"shm has 64 MiB free, but 2 loader processes x 5 batches of 36 MiB "
                                              r"need 367 MiB: give the container more shared memory"):
            loader.check_shared_memory(str(small))
    loader.check_shared_memory(str(tmp_path / "absent"))  # no such folder (not Linux): nothing to check
    on_gpu = ShardLoader(photo_shards, "train", 32, rank=0, world_size=1, num_workers=2,
                         views=PhotoViews(224, 2, random=True), encoded=device_reads)
    assert on_gpu.batch_bytes() < 32 * 2 * 100_000  # undecoded bytes only


def test_a_photos_crops_cut_at_once_match_torchvisions_crop_by_crop(photo_folder):
    """The accelerator path cuts and resizes all of a photo's crops in one ``roi_align`` (averaging samples where
    it shrinks); torchvision's antialiased resize per crop is the reference: within a level on average, a few
    levels at most for any crop (box against triangle filter on strong shrinks)."""
    import torchvision.io as tio
    import torchvision.transforms.v2.functional as TF

    rng = np.random.default_rng(0)
    means = []
    for path in sorted(photo_folder.rglob("*.jpg"))[:12]:
        image = tio.decode_jpeg(tio.read_file(str(path)))
        boxes = random_boxes(np.tile(image.shape[1:], (4, 1)), rng)
        for size in (64, 224):
            at_once = resized_crops(image, boxes, size)
            expected = [TF.resized_crop(image, *box, [size, size], antialias=True) for box in boxes.tolist()]
            means += [(a.int() - e.int()).abs().float().mean().item() for a, e in zip(at_once, expected, strict=True)]
    assert np.mean(means) < 1.0 and max(means) < 5.0, means


@pytest.fixture(scope="module")
def mixed_photo_shards(tmp_path_factory):
    """12 train photos of 2 classes as a folder may hold them: 4 baseline JPEGs, 4 progressive JPEGs (kept as they
    are by sharding), 4 PNGs (kept as PNGs with ``lossless``)."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for i in range(12):
        (folder / "train" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        grey = 10 + 20 * i + rng.integers(-8, 9, (90 + i, 120, 3))
        image = Image.fromarray(grey.astype(np.uint8))
        path = folder / "train" / f"c{i % 2}" / f"{i:02d}"
        if i % 3 == 2:
            image.save(path.with_suffix(".png"))
        else:
            image.save(path.with_suffix(".jpg"), quality=90, progressive=i % 3 == 1)
    for label in range(2):  # (a test split of its own: else a tenth of train would be held out)
        (folder / "test" / f"c{label}").mkdir(parents=True)
        image.save(folder / "test" / f"c{label}" / "test.jpg")
    out = tmp_path_factory.mktemp("mixed-shards")
    files, classes = photo_files(f"folder:{folder}")
    write_photo_shards(files, classes, out, source={"name": "mixed"}, samples_per_shard=5, progress=False,
                       lossless=True)
    return out


def test_for_the_gpus_decoder_the_loader_sends_baseline_jpegs_and_crops_the_rest(mixed_photo_shards):
    """With ``encoded=device_reads`` the baseline JPEGs travel undecoded and the loader processes decode and crop the
    progressive JPEGs and PNGs (the GPU's decoder reads those on one host thread, or not at all); the training
    process's views of such a mixed batch hold every photo once, in row order, each crop the photo's own."""
    loader = ShardLoader(mixed_photo_shards, "train", 12, rank=0, world_size=1, num_workers=0, shuffle=False,
                         drop_last=False, views=PhotoViews(32, 2, random=True), encoded=device_reads)
    ((encoded, _, _),) = list(loader)
    whole = ShardLoader(mixed_photo_shards, "train", 12, rank=0, world_size=1, num_workers=0, shuffle=False,
                        drop_last=False, views=PhotoViews(32), encoded=every_photo)
    blobs = [bytes(b.numpy()) for b in next(iter(whole))[0].blobs()]
    kinds = ["baseline" if device_reads(b) else "png" if b[:4] == b"\x89PNG" else "progressive" for b in blobs]
    assert sorted(kinds) == ["baseline"] * 4 + ["png"] * 4 + ["progressive"] * 4
    assert [bool(n) for n in encoded.lengths.tolist()] == [kind == "baseline" for kind in kinds]
    assert encoded.crops.shape == (8, 2, 3, 32, 32) and encoded.crops.dtype == torch.uint8
    part = encoded.take(torch.arange(12)[3:9])  # a rank's share of a batch takes its rows' crops with it
    cropped_before = int((encoded.lengths[:3] == 0).sum())
    assert torch.equal(part.crops, encoded.crops[cropped_before : cropped_before + int((part.lengths == 0).sum())])
    counts = collections.Counter()
    views, rows = batch_views(encoded, PhotoViews(32, 2, random=True), np.random.default_rng(0), CPU,
                              lambda *_: None, counts)
    assert rows == list(range(12)) and views.shape == (12, 2, 3, 32, 32)
    assert counts == {"loader": 8, "host": 4}  # (the CPU here stands in for the device)
    cropped = [row for row, kind in enumerate(kinds) if kind != "baseline"]
    assert torch.equal(views[cropped], encoded.crops)
    for row in range(12):  # each row's crops come from its own photo (each photo has a grey level of its own)
        photo = decode_images([torch.frombuffer(bytearray(blobs[row]), dtype=torch.uint8)], CPU)
        assert abs(views[row].float().mean() - next(photo).float().mean()) < 4, row
