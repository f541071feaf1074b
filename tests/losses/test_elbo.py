import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pipeline.losses import active_units, bernoulli_nll, gaussian_kl, gaussian_nll, negative_elbo
from pipeline.methods import build_method
from pipeline.methods.vae import VAEOptions
from pipeline.models import EncoderSpec, ModelConfig
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
    assert bernoulli_nll(torch.logit(probs), x).item() == pytest.approx(-math.log(0.8) - math.log(0.75), rel=1e-6)
    saturated = torch.full((1, 1, 1, 2), 40.0)  # sigmoid(40) is 1.0 in float32: the loss stays finite and right
    assert bernoulli_nll(saturated, torch.zeros(1, 1, 1, 2)).item() == pytest.approx(80.0, rel=1e-6)
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
    options = VAEOptions(kl_anneal_steps=10, bottleneck=3)
    spec = EncoderSpec("small_cnn", 1, 28, (0.0,), (1.0,), width=4, embed_dim=16)
    vae = build_method(options, spec, ModelConfig())
    for step in range(1, 4):
        vae.after_step(step, 100)
    restored = build_method(options, spec, ModelConfig())
    restored.load_state_dict(vae.state_dict())
    assert restored.current_beta() == pytest.approx(0.3)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(vae.encoder(x), vae.posterior(x)[0])
    torch.manual_seed(0)
    loss = vae(x)
    torch.manual_seed(0)
    nll, kl, _ = vae.elbo_terms(x)  # the same reparameterised sample
    torch.testing.assert_close(loss, negative_elbo(nll, kl, 0.3))


def test_the_vae_scores_its_decoders_logits_as_bce_of_its_reconstruction():
    """The likelihood runs on the logits before the decoder's sigmoid (autocast-safe); it equals the binary
    cross-entropy of the reconstruction the decoder outputs, and works under bf16 autocast."""
    vae = _vae().eval()
    x = torch.rand(4, 1, 28, 28)
    nll, _, mu = vae.elbo_terms(x, sample=False)
    reconstruction = vae.decoder(mu)
    expected = torch.nn.functional.binary_cross_entropy(reconstruction, x, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(nll, expected, rtol=1e-4, atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = vae.elbo_terms(x, sample=False)[0]
    assert under_autocast.dtype == torch.float32 and torch.isfinite(under_autocast).all()


def test_active_units_by_hand():
    mu = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.1, 2.0], [0.0, 0.9, -2.0]])  # variances 0, 0.0067, 2.67
    assert active_units(mu.sum(0), mu.pow(2).sum(0), 3) == 1


def _vae(bottleneck=3):
    spec = EncoderSpec("small_cnn", 1, 28, (0.0,), (1.0,), width=4, embed_dim=16)
    return build_method(VAEOptions(bottleneck=bottleneck), spec, ModelConfig())


def test_vae_reports_kl_per_dimension_and_active_units_of_its_training_epoch():
    vae = _vae()
    batches = [torch.rand(5, 1, 28, 28), torch.rand(3, 1, 28, 28)]
    for x in batches:
        vae(x)
    x = torch.cat(batches)
    kl = torch.cat([gaussian_kl(*vae.posterior(b)) for b in batches])  # in training mode, as the epoch ran
    metrics = vae.epoch_metrics(lambda t: t)
    assert metrics["train_kl"] == pytest.approx(kl.mean(0).sum().item(), rel=1e-4)
    assert [metrics[f"train_kl_dim_{j}"] for j in range(3)] == pytest.approx(kl.mean(0).tolist(), rel=1e-4)
    assert metrics["train_active_units"] in (0.0, 1.0, 2.0, 3.0)
    assert vae.epoch_metrics(lambda t: t) == {"kl_weight": vae.current_beta()}  # the sums start afresh each epoch
    vae.eval()
    vae(x)
    assert vae.epoch_metrics(lambda t: t) == {"kl_weight": vae.current_beta()}  # evaluation passes don't count


def test_a_collapsed_posterior_is_reported_with_a_warning(caplog):
    vae = _vae(bottleneck=4)
    with torch.no_grad():
        vae.mean.weight.zero_()  # mu no longer depends on the image: every unit inactive
    vae(torch.rand(16, 1, 28, 28))
    metrics = vae.epoch_metrics(lambda t: t)
    assert metrics["train_active_units"] == 0.0
    assert "posterior collapse: 0 of 4 latent units are active" in caplog.text
