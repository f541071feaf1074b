"""Our batched colour jitter and blur against torchvision's and Kornia's, step by step."""

import pytest
import torch
import torchvision.transforms.v2.functional as F
from kornia.filters import gaussian_blur2d

from augment.blur import RandomGaussianBlur
from augment.color import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    ColorJitter,
    RandomGrayscale,
    RandomSolarize,
    jitter,
    jitter_gray,
    shift_hue,
)
from augment.presets import ViewAugmenter
from tests.sync_guard import HostSyncs

TORCHVISION = {
    BRIGHTNESS: F.adjust_brightness,
    CONTRAST: F.adjust_contrast,
    SATURATION: F.adjust_saturation,
    HUE: F.adjust_hue,
}


def _smooth(batch, size=48, low=0.0, high=1.0):
    torch.manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(batch, 3, 6, 6), size=size, mode="bilinear")
    return low + (high - low) * images


@pytest.mark.parametrize("turn", [-0.5, -0.2, 0.03, 0.25, 0.5])
def test_hue_turns_as_torchvision_does(turn):
    images = _smooth(6)
    images[0, :, :8, :8] = 0.5  # grays stay gray
    expected = torch.stack([F.adjust_hue(image, turn) for image in images])
    torch.testing.assert_close(shift_hue(images, torch.full((6,), turn)), expected, atol=2e-6, rtol=0)


def test_jitter_equals_torchvisions_steps_in_each_images_order():
    images = _smooth(24, low=0.3, high=0.7)  # mid-range: no step clips, so the one clamp at the end is exact
    torch.manual_seed(1)
    order, factors, applied = ColorJitter(0.2, 0.2, 0.2, 0.1, p=0.75).draw(24)
    assert 0 < applied.sum() < 24 and len({tuple(o) for o in order.tolist()}) > 5
    expected = []
    for image, steps, factor, on in zip(images, order.tolist(), factors, applied, strict=True):
        for step in steps if on else []:
            image = TORCHVISION[step](image, factor[step].item())
        expected.append(image)
    torch.testing.assert_close(jitter(images, order, factors, applied), torch.stack(expected), atol=3e-5, rtol=0)


def test_jitter_factors_follow_torchvisions_ranges():
    torch.manual_seed(0)
    order, factors, applied = ColorJitter(0.8, 0.4, 0.2, 0.1, p=0.8).draw(20000)
    low, high = factors.min(0).values, factors.max(0).values
    torch.testing.assert_close(low, torch.tensor([0.2, 0.6, 0.8, -0.1]), atol=1e-3, rtol=0)
    torch.testing.assert_close(high, torch.tensor([1.8, 1.4, 1.2, 0.1]), atol=1e-3, rtol=0)
    assert abs(applied.float().mean() - 0.8) < 0.01
    assert (order.sort(1).values == torch.arange(4)).all()  # a permutation of the four steps for every image
    first = torch.bincount(order[:, 0], minlength=4) / 20000
    assert (abs(first - 0.25) < 0.02).all()


def test_blur_matches_the_full_kernel_within_its_truncation():
    images = torch.rand(8, 3, 64, 64)
    torch.manual_seed(3)
    blurred = RandomGaussianBlur(23, (0.1, 2.0), p=1.0)(images)
    torch.manual_seed(3)
    torch.rand(8)  # the draws of p
    sigmas = torch.empty(8).uniform_(0.1, 2.0)[:, None].expand(-1, 2)
    expected = gaussian_blur2d(images, (23, 23), sigmas, border_type="reflect")
    torch.testing.assert_close(blurred, expected, atol=2e-3, rtol=0)


def test_blur_leaves_the_images_it_does_not_choose():
    images = torch.rand(400, 3, 16, 16)
    blurred = RandomGaussianBlur(5, (1.0, 2.0), p=0.5)(images)
    unchanged = (blurred == images).flatten(1).all(1).float().mean()
    assert 0.4 < unchanged < 0.6


def test_views_are_the_same_in_chunks_as_whole():
    """On CPUs views are made a few images at a time; the result does not depend on the chunk size."""
    import augment.presets as presets

    crops = torch.randint(0, 256, (200, 2, 3, 64, 64), dtype=torch.uint8)
    whole = ViewAugmenter("simclr", 64, 3, 2, seed=5, crop=False).stacked(crops)
    small = presets.CPU_CHUNK_BYTES
    try:
        presets.CPU_CHUNK_BYTES = 3 * 64 * 64 * 4 * 7  # 7 images per chunk
        chunked = ViewAugmenter("simclr", 64, 3, 2, seed=5, crop=False).stacked(crops)
    finally:
        presets.CPU_CHUNK_BYTES = small
    assert whole.shape == chunked.shape == (200, 2, 3, 64, 64)
    assert not torch.equal(whole, chunked)  # other random draws per chunk ...
    for statistic in (lambda v: v.mean(), lambda v: v.std()):  # ... from the same distribution
        assert abs(statistic(whole) - statistic(chunked)) < 0.03


def test_jitter_and_blur_wait_on_no_device(monkeypatch):
    """Drawing, jittering and blurring a batch reads nothing back to the host and copies nothing onto the batch's
    device, either of which would stall a GPU's stream (before: 18 a call of the two, Kornia's Gaussian filter
    included: 2 ``nonzero``, 2 ``.cpu()``, 2 scalar reads and 12 blocking ``.to()``). The blur's device path runs
    here on the CPU (where it would cut out its chosen images)."""
    monkeypatch.setattr("augment.blur.host_selects", lambda device: False)
    images = _smooth(8, size=64)
    with HostSyncs() as syncs:
        RandomGaussianBlur(13, (0.1, 2.0), p=0.5)(ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8)(images))
    assert not syncs.seen


def test_blur_by_index_on_the_cpu_equals_the_device_path(monkeypatch):
    images = _smooth(16, size=64)
    torch.manual_seed(4)
    by_index = RandomGaussianBlur(13, (0.1, 2.0), p=0.5)(images)
    monkeypatch.setattr("augment.blur.host_selects", lambda device: False)
    torch.manual_seed(4)
    torch.testing.assert_close(RandomGaussianBlur(13, (0.1, 2.0), p=0.5)(images), by_index, atol=1e-6, rtol=0)
    assert 0 < (by_index == images).flatten(1).all(1).sum() < 16


def test_gray_jitter_equals_torchvisions_brightness_and_contrast_in_each_images_order():
    images = _smooth(24, low=0.3, high=0.7)[:, :1]
    torch.manual_seed(2)
    order, factors, applied = ColorJitter(0.4, 0.4, 0.0, 0.0, p=0.75).draw(24)
    expected = []
    for image, steps, factor, on in zip(images, order.tolist(), factors, applied, strict=True):
        for step in [s for s in steps if s in (BRIGHTNESS, CONTRAST)] if on else []:
            image = TORCHVISION[step](image, factor[step].item())
        expected.append(image)
    torch.testing.assert_close(jitter_gray(images, order, factors, applied), torch.stack(expected), atol=3e-6, rtol=0)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_grayscale_and_solarize_as_torchvision_computes_them(p):
    """(ITU-R 601 luma: torchvision weighs red 0.2989, not 0.299, so its grays are up to 1e-4 apart.)"""
    images = _smooth(4)
    gray = torch.stack([F.rgb_to_grayscale(image, num_output_channels=3) for image in images])
    torch.testing.assert_close(RandomGrayscale(p)(images), gray if p else images, atol=1.1e-4, rtol=0)
    solarized = torch.stack([F.solarize(image, 0.5) for image in images])
    assert torch.equal(RandomSolarize(p)(images), solarized if p else images)
