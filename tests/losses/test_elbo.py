import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pipeline.config import JobConfig
from pipeline.losses import bernoulli_nll, gaussian_kl, gaussian_nll, negative_elbo
from pipeline.methods import build_method
from pipeline.models import EncoderSpec
from pipeline.schedules import kl_weight


def test_kl_closed_form_on_a_tiny_case():
    mu, logvar = torch.tensor([[0.0, 1.0], [0.5, -2.0]]), torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # by hand: KL(N(1, 4) || N(0, 1)) = 0.5 (1 + 4 - 1 - ln 4); KL(N(0, 1) || N(0, 1)) = 0
    assert gaussian_kl(mu, logvar)[0].tolist() == pytest.approx([0.0, 0.5 * (4 - math.log(4.0))])
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference)


def test_likelihoods_hand_computed():
    x = torch.tensor([[[[1.0, 0.0]]]])
    probs = torch.tensor([[[[0.8, 0.25]]]])
    assert bernoulli_nll(probs, x).item() == pytest.approx(-math.log(0.8) - math.log(0.75), rel=1e-6)
    mean = torch.tensor([[[[0.9, 0.0]]]])
    expected = 0.5 * (0.1 / 0.1) ** 2 + 2 * (math.log(0.1) + 0.5 * math.log(2 * math.pi))
    assert gaussian_nll(mean, x, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_negative_elbo_beta_and_free_bits():
    nll = torch.tensor([10.0, 20.0])
    kl = torch.tensor([[1.0, 0.1], [3.0, 0.1]])  # per-dimension batch means 2.0 and 0.1
    assert negative_elbo(nll, kl).item() == pytest.approx(15 + 2.1)
    assert negative_elbo(nll, kl, beta=4.0).item() == pytest.approx(15 + 4 * 2.1)
    assert negative_elbo(nll, kl, free_bits=0.5).item() == pytest.approx(15 + 2.0 + 0.5)


def test_annealing_schedule():
    assert [kl_weight(s, 4, 2.0) for s in (0, 1, 2, 4, 10)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert kl_weight(0, 0, 3.0) == 3.0


def test_vae_counter_is_checkpointed_and_the_encoder_gives_the_mean():
    config = JobConfig()
    config.method.name, config.method.kl_anneal_steps, config.method.bottleneck = "vae", 10, 3
    spec = EncoderSpec("small_cnn", 1, 28, (0.0,), (1.0,), width=4, embed_dim=16)
    vae = build_method(config, spec)
    for step in range(1, 4):
        vae.after_step(step, 100)
    restored = build_method(config, spec)
    restored.load_state_dict(vae.state_dict())
    assert restored.current_beta() == pytest.approx(0.3)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(vae.encoder(x), vae.posterior(x)[0])
    torch.manual_seed(0)
    loss = vae(x)
    torch.manual_seed(0)
    nll, kl, _ = vae.terms(x)  # the same reparameterised sample
    torch.testing.assert_close(loss, negative_elbo(nll, kl, 0.3))
