"""Our batched random resized crop and flip against torchvision's, and the view presets' host syncs."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from augment.geometry import RandomHorizontalFlip, crop_boxes, resized_crops
from augment.presets import ViewAugmenter
from tests.sync_guard import HostSyncs


def test_crop_boxes_are_drawn_as_torchvision_draws_them():
    """20,000 boxes of a 40 x 60 image against torchvision's ``make_params``: the same mean area share, aspect ratio
    and offsets (within sampling error), whole pixels, every box inside the image."""
    torch.manual_seed(0)
    ours = crop_boxes(20000, 40, 60, (0.08, 1.0), torch.device("cpu"))
    transform = v2.RandomResizedCrop(8, scale=(0.08, 1.0))
    image = torch.zeros(1, 40, 60)
    theirs = torch.tensor(
        [list(transform.make_params([image]).values()) for _ in range(20000)], dtype=torch.float32
    )  # (top, left, height, width)
    assert torch.equal(ours, ours.round())
    top, left, h, w = ours.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 60).all()
    for name, column in (
        ("share", lambda b: b[:, 2] * b[:, 3] / 2400),
        ("log ratio", lambda b: (b[:, 3] / b[:, 2]).log()),
    ):
        mine, peer = column(ours), column(theirs)
        assert abs(mine.mean() - peer.mean()) < 0.01, name
        assert abs(mine.std() - peer.std()) < 0.01, name
    assert abs((top / (40 - h + 1)).mean() - (theirs[:, 0] / (40 - theirs[:, 2] + 1)).mean()) < 0.01


def test_a_box_no_candidate_fits_falls_back_to_torchvisions_centred_crop():
    """A 10 x 100 image, areas of at least half of it: no candidate of aspect 3/4-4/3 fits; torchvision then takes
    the full height at the largest ratio, centred."""
    boxes = crop_boxes(5, 10, 100, (0.5, 1.0), torch.device("cpu"))
    assert boxes.tolist() == [[0.0, 43.0, 10.0, 13.0]] * 5


def test_resized_crops_sample_pixel_centres_as_interpolate_does():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 12, 16)
    whole = torch.tensor([[0.0, 0.0, 12.0, 16.0]]).expand(3, 4)
    for size in (7, 24):  # down and up
        expected = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        torch.testing.assert_close(resized_crops(x, whole, size), expected, atol=3e-6, rtol=0)
    boxes = torch.tensor([[2.0, 3.0, 5.0, 5.0], [0.0, 11.0, 5.0, 5.0], [7.0, 0.0, 5.0, 5.0]])
    exact = torch.stack(
        [image[:, t : t + 5, s : s + 5] for image, (t, s) in zip(x, [(2, 3), (0, 11), (7, 0)], strict=True)]
    )
    torch.testing.assert_close(resized_crops(x, boxes, 5), exact, atol=1e-6, rtol=0)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_flip_mirrors_the_images_it_chooses(p):
    x = torch.rand(4, 3, 5, 6)
    assert torch.equal(RandomHorizontalFlip(p)(x), x.flip(-1) if p else x)


@pytest.mark.parametrize(
    ("preset", "size", "channels"), [("simclr", 96, 3), ("byol", 96, 3), ("simclr", 28, 1), ("light", 28, 1)]
)
def test_views_wait_on_no_device(monkeypatch, preset, size, channels):
    """Every op of every preset, photos' and arrays': nothing read back to the host, nothing copied onto the device
    (before: 34-42 a call, most in Kornia's parameter generators and random application). The blur's device path
    runs here on the CPU."""
    monkeypatch.setattr("augment.blur.host_selects", lambda device: False)
    batch = torch.randint(0, 256, (8, channels, size + 8, size + 8), dtype=torch.uint8)
    augmenter = ViewAugmenter(preset, size, channels, seed=0)
    with HostSyncs() as syncs:
        augmenter(batch)
    assert not syncs.seen
