import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from augment import PRESETS, ViewAugmenter, save_image_grid, save_view_grid
from augment.blur import RandomGaussianBlur
from augment.presets import to_unit_float
from pipeline.errors import ConfigError


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 64)])
def test_views_shape_range_and_device(preset, channels, size):
    batch = torch.randint(0, 256, (16, channels, size + 4, size + 4), dtype=torch.uint8)
    views = ViewAugmenter(preset, size, channels)(batch)
    assert len(views) == 2
    for view in views:
        assert view.shape == (16, channels, size, size) and view.dtype == torch.float32
        assert view.device == batch.device and view.min() >= 0.0 and view.max() <= 1.0


def test_none_preset_passes_images_through():
    batch = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    (view,) = ViewAugmenter("none", 28, 1, num_views=1)(batch)
    torch.testing.assert_close(view, batch.float() / 255)


def test_parameters_are_drawn_per_sample():
    batch = torch.linspace(0, 255, 28 * 28).reshape(1, 1, 28, 28).to(torch.uint8).repeat(32, 1, 1, 1)
    view = ViewAugmenter("simclr", 28, 1)(batch)[0]
    assert len({tuple(v.flatten().tolist()) for v in view}) == 32


def test_seed_reproduces_and_leaves_global_rng_alone():
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = ViewAugmenter("simclr", 32, 3, seed=7)(batch)
    assert torch.equal(torch.get_rng_state(), state)
    second = ViewAugmenter("simclr", 32, 3, seed=7)(batch)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    augmenter = ViewAugmenter("simclr", 32, 3, seed=7)
    augmenter(batch)
    assert not torch.equal(augmenter(batch)[0], first[0])  # the next call draws new parameters


def test_uint8_and_unit_float_inputs_agree():
    batch = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    from_uint8 = ViewAugmenter("light", 28, 1, seed=1)(batch)
    from_float = ViewAugmenter("light", 28, 1, seed=1)(batch.float() / 255)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(from_uint8, from_float, strict=True))


def test_byol_views_are_asymmetric_in_solarization():
    bright = torch.full((1024, 3, 32, 32), 255, dtype=torch.uint8)  # stays >= 0.6 after jitter: solarize -> <= 0.4
    view1, view2 = ViewAugmenter("byol", 32, 3, seed=0)(bright)
    solarized = lambda view: (view.mean(dim=(1, 2, 3)) < 0.45).float().mean().item()  # noqa: E731
    assert solarized(view1) == 0.0
    assert 0.15 < solarized(view2) < 0.25  # p = 0.2


@pytest.mark.parametrize(
    ("preset", "size", "blurs"), [("simclr", 32, 0), ("simclr", 64, 1), ("byol", 28, 0), ("byol", 96, 2)]
)
def test_blur_only_for_images_of_64_px_and_more(preset, size, blurs):
    augmenter = ViewAugmenter(preset, size, 3)
    unique = {id(m) for m in augmenter.modules() if isinstance(m, RandomGaussianBlur)}
    assert len(unique) == blurs


def test_strengths_change_the_crop_and_the_jitter():
    batch = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)
    image = batch.float() / 255

    def whole_or_mirrored(views: list[torch.Tensor]) -> float:
        """Share of the views that are their image or its mirror image, to float precision."""
        close = lambda a, b: (a - b).abs().amax(dim=(1, 2, 3)) < 1e-3  # noqa: E731
        return torch.cat([close(view, image) | close(view, image.flip(-1)) for view in views]).float().mean().item()

    assert (
        whole_or_mirrored(ViewAugmenter("simclr", 28, 1, seed=0, crop_min_scale=1.0, jitter_strength=0.0)(batch)) == 1
    )
    assert whole_or_mirrored(ViewAugmenter("simclr", 28, 1, seed=0, crop_min_scale=1.0)(batch)) < 0.3  # jitter p=0.8
    assert whole_or_mirrored(ViewAugmenter("simclr", 28, 1, seed=0, jitter_strength=0.0)(batch)) < 0.05  # crops
    with pytest.raises(
        ConfigError, match=re.escape("augment.jitter_strength applies to the simclr preset only, not byol")
    ):
        ViewAugmenter("byol", 28, 1, jitter_strength=0.5)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown augmentation preset 'moco': choose one of simclr, byol, light"):
        ViewAugmenter("moco", 32, 3)


def test_preview_grid_png(tmp_path):
    batch = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    views = ViewAugmenter("light", 28, 1, seed=0)(batch)
    path = save_view_grid(batch, views, tmp_path / "grid.png")
    image = np.asarray(Image.open(path))
    assert image.shape[:2] == (3 * 96 + 4 * 2, 6 * 96 + 7 * 2)  # 3 rows (original + 2 views) of 6 cells
    assert (image[2, 2] == batch[0, 0, 0, 0].item()).all()  # top-left pixel of the first original, enlarged


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_is_torchvisions_make_grid(tmp_path, channels):
    from torchvision.utils import make_grid, save_image

    rows = [torch.randint(0, 256, (4, channels, 28, 28), dtype=torch.uint8), torch.rand(4, channels, 20, 20)]
    ours = np.asarray(Image.open(save_image_grid(rows, tmp_path / "ours.png")))
    cells = [F.interpolate(to_unit_float(row), size=(96, 96), mode="nearest") for row in rows]
    save_image(make_grid(torch.cat(cells), nrow=4, padding=2, pad_value=1.0), tmp_path / "torchvision.png")
    theirs = np.asarray(Image.open(tmp_path / "torchvision.png"))  # RGB even for one channel
    np.testing.assert_array_equal(ours, theirs[..., 0] if channels == 1 else theirs)
