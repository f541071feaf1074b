"""Every loss is computed in float32 under bf16 autocast: the same value as outside it, a float32 result."""

import pytest
import torch

from pipeline.losses import (
    bernoulli_nll,
    byol_loss,
    gaussian_kl,
    gaussian_nll,
    kl_sparsity,
    l1_sparsity,
    negative_elbo,
    nt_xent,
)

torch.manual_seed(0)
Z1, Z2 = torch.randn(64, 128), torch.randn(64, 128)
PROBS, PIXELS = torch.rand(8, 1, 28, 28).clamp(0.01, 0.99), torch.rand(8, 1, 28, 28)
CODES = torch.rand(32, 16) * 0.02 + 1 - 0.02  # units firing near 1: 1 - rho_hat is tiny

LOSSES = {
    "nt_xent": lambda: nt_xent(Z1, Z2, 0.2),
    "byol": lambda: byol_loss(Z1, Z2),
    "kl_sparsity": lambda: kl_sparsity(CODES, 0.05),
    "l1_sparsity": lambda: l1_sparsity(Z1),
    "gaussian_kl": lambda: gaussian_kl(Z1[:, :8], Z2[:, :8]),
    "bernoulli_nll": lambda: bernoulli_nll(torch.logit(PROBS), PIXELS),
    "gaussian_nll": lambda: gaussian_nll(PROBS, PIXELS, 0.1),
    "negative_elbo": lambda: negative_elbo(Z1[:, 0].abs(), Z2[:, :8].abs(), beta=4.0, free_bits=0.1),
}


@pytest.mark.parametrize("name", LOSSES)
def test_losses_ignore_bf16_autocast(name):
    expected = LOSSES[name]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = LOSSES[name]()
    assert value.dtype == torch.float32 and torch.isfinite(value).all()
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


def test_bf16_inputs_are_upcast_before_the_loss():
    """Embeddings that arrive in bf16 (a head run under autocast) are scored in float32: the logits of
    near-identical unit vectors are not rounded to a tie."""
    z = torch.randn(16, 64).to(torch.bfloat16)
    loss = nt_xent(z, z, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, nt_xent(z.float(), z.float(), 0.1))


def test_kl_sparsity_of_bf16_codes_that_always_fire_is_finite():
    """``1 - 1e-6`` is 1.0 in bf16: clamped there, a unit that always fires would cost ``log(0)``."""
    codes = torch.ones(32, 16, dtype=torch.bfloat16)
    penalty = kl_sparsity(codes, 0.05)
    assert torch.isfinite(penalty) and penalty > 100
