import math

import pytest
import torch

from pipeline.losses import kl_sparsity, l1_sparsity


def test_l1_hand_computed():
    z = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, -1.0]])
    assert l1_sparsity(z).item() == pytest.approx((3.0 + 2.0) / 2)


def test_kl_hand_computed():
    z = torch.tensor([[0.1, 0.5], [0.3, 0.5]])  # mean activations 0.2 and 0.5
    rho = 0.2
    second = rho * math.log(rho / 0.5) + (1 - rho) * math.log((1 - rho) / 0.5)
    assert kl_sparsity(z, rho).item() == pytest.approx(0.0 + second, rel=1e-5)
    assert kl_sparsity(torch.full((4, 3), 0.05), 0.05).item() == pytest.approx(0.0, abs=1e-6)
