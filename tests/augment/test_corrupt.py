import re

import pytest
import torch

from augment import Corruption, corrupt
from pipeline.errors import ConfigError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_salt_and_pepper_hand_computed():
    x = torch.full((2, 3, 4, 4), 0.5)
    u = torch.rand((2, 1, 4, 4), generator=_gen())
    expected = torch.where(u < 0.1, 0.0, torch.where(u < 0.2, 1.0, 0.5)).expand(2, 3, 4, 4)
    assert torch.equal(corrupt(x, "salt_pepper", 0.2, _gen()), expected)


def test_masking_hand_computed():
    x = torch.rand(2, 3, 5, 5)
    u = torch.rand((2, 1, 5, 5), generator=_gen(1))
    assert torch.equal(corrupt(x, "mask", 0.3, _gen(1)), x * (u >= 0.3))


def test_gaussian_noise_hand_computed_and_clipped():
    x = torch.full((4, 1, 8, 8), 0.5)
    noise = torch.randn((4, 1, 8, 8), generator=_gen(2))
    out = corrupt(x, "gaussian", 0.3, _gen(2))
    assert torch.allclose(out, (0.5 + 0.3 * noise).clamp(0, 1))
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(("kind", "amount"), [("mask", 0.25), ("salt_pepper", 0.1)])
def test_pixel_fractions(kind, amount):
    x = torch.full((64, 3, 32, 32), 0.5)
    out = Corruption(kind, amount)(x)
    changed = (out != 0.5).any(dim=1).float().mean().item()
    assert changed == pytest.approx(amount, abs=0.01)
    assert ((out != 0.5).any(dim=1) == (out != 0.5).all(dim=1)).all()  # channels of a pixel change together


def test_bad_corruptions():
    with pytest.raises(ConfigError, match="unknown corruption 'blur': choose one of gaussian, mask, salt_pepper"):
        Corruption("blur", 0.1)
    with pytest.raises(ConfigError, match=re.escape("corruption amount for 'mask' out of range: 1.5")):
        Corruption("mask", 1.5)


def test_the_declared_corruptions_are_the_implemented_ones():
    from typing import get_args

    from augment.corrupt import CORRUPTIONS, CorruptionKind

    assert set(get_args(CorruptionKind)) == set(CORRUPTIONS)  # what the config accepts is what corrupt() does
