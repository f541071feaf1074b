import numpy as np
import pytest
import torch
from torch import nn

from pipeline.data import LabeledShards
from pipeline.evaluate.anomaly_scores import auroc
from pipeline.evaluate.reconstruction import pca_reconstruction_errors, reconstruct_split
from pipeline.methods import build_method
from pipeline.methods.capabilities import Capability
from pipeline.methods.vae import VAEOptions
from pipeline.models import EncoderSpec, ModelConfig


def test_pca_errors_are_zero_at_full_rank_and_positive_below():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 10))
    assert pca_reconstruction_errors(data[:150], data[150:], 3).shape == (50,)
    assert pca_reconstruction_errors(data[:150], data[150:], 3).max() == pytest.approx(0.0, abs=1e-20)
    assert pca_reconstruction_errors(data[:150], data[150:], 1).mean() > 0.01


def test_pca_flags_what_lies_off_the_subspace_it_was_fitted_on():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 8))
    odd = rng.normal(size=(50, 8))  # off the 2-d subspace
    test = np.concatenate([normal[200:], odd])
    labels = np.array([0] * 100 + [1] * 50)
    errors = pca_reconstruction_errors(normal[:200], test, 2)
    assert auroc(errors, labels == 1) == 1.0
    assert auroc(-errors, labels == 1) == 0.0


class _Identity(nn.Module):
    capabilities = frozenset({Capability.RECONSTRUCTS})

    def reconstruct(self, x):
        return x, x.flatten(1)


def test_identity_reconstructs_perfectly(even_shards):
    result = reconstruct_split(_Identity(), LabeledShards(str(even_shards), 64), torch.device("cpu"))
    assert result.metrics == {"recon_mse": 0.0}
    assert result.errors.shape == result.labels.shape == (128,) and not result.errors.any()
    assert result.originals.shape == result.reconstructions.shape == (8, 1, 28, 28)


def test_vae_metrics(even_shards):
    vae = build_method(
        VAEOptions(bottleneck=4), EncoderSpec("small_cnn", 1, 28, (0.3,), (0.3,), width=4, embed_dim=8), ModelConfig()
    )
    result = reconstruct_split(vae, LabeledShards(str(even_shards), 64), torch.device("cpu"))
    metrics = result.metrics
    assert set(metrics) == {"recon_mse", "elbo", "kl", "active_units"}
    assert result.negative_elbo.shape == (128,) and -result.negative_elbo.mean() == pytest.approx(metrics["elbo"])
    assert metrics["elbo"] < 0 and metrics["kl"] >= 0 and 0 <= metrics["active_units"] <= 4
