import math

import pytest
import torch

from pipeline.losses import nt_xent


def test_hand_computed_two_pairs():
    # unit vectors: image 0 views at 0 and 90 degrees, image 1 views at 180 and 270 degrees
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    z2 = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    t = 0.5
    # anchor z1[0]: positive z2[0] (cos 0), others z1[1] (cos -1), z2[1] (cos 0)
    # every anchor has the same picture by symmetry: one positive at cos 0, one at cos -1, one at cos 0
    expected = -math.log(math.exp(0 / t) / (math.exp(0 / t) + math.exp(-1 / t) + math.exp(0 / t)))
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)


def test_matches_explicit_sum_on_random_batch():
    torch.manual_seed(0)
    z1, z2, t = torch.randn(5, 3), torch.randn(5, 3), 0.2
    u = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = len(u)
    total = 0.0
    for i in range(n):
        positive = (i + 5) % n
        denominator = sum(math.exp(u[i] @ u[k] / t) for k in range(n) if k != i)
        total += -math.log(math.exp(u[i] @ u[positive] / t) / denominator)
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / n, rel=1e-5)


def test_scale_invariant_and_differentiable():
    torch.manual_seed(1)
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8)
    loss = nt_xent(z1, z2)
    assert loss.item() == pytest.approx(nt_xent(3 * z1, 0.5 * z2).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_aligned_views_score_lower_than_random():
    torch.manual_seed(2)
    z = torch.randn(16, 32)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z)) < nt_xent(z, torch.randn(16, 32))
