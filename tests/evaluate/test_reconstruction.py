import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import JobConfig
from pipeline.evaluate.reconstruction import pca_reconstruction_mse, reconstruction_metrics
from pipeline.methods import build_method
from pipeline.models import EncoderSpec


def test_pca_mse_is_zero_at_full_rank_and_positive_below():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 10))
    assert pca_reconstruction_mse(data[:150], data[150:], 3) == pytest.approx(0.0, abs=1e-20)
    assert pca_reconstruction_mse(data[:150], data[150:], 1) > 0.01


class _Identity(nn.Module):
    def reconstruct(self, x):
        return x, x.flatten(1)


def test_identity_reconstructs_perfectly(even_shards):
    metrics, originals, reconstructions = reconstruction_metrics(_Identity(), str(even_shards), 64, torch.device("cpu"))
    assert metrics == {"recon_mse": 0.0}
    assert originals.shape == reconstructions.shape == (8, 1, 28, 28)


def test_vae_metrics(even_shards):
    config = JobConfig()
    config.method.name, config.method.bottleneck = "vae", 4
    vae = build_method(config, EncoderSpec("small_cnn", 1, 28, (0.3,), (0.3,), width=4, embed_dim=8))
    metrics, _, _ = reconstruction_metrics(vae, str(even_shards), 64, torch.device("cpu"))
    assert set(metrics) == {"recon_mse", "elbo", "kl", "active_units"}
    assert metrics["elbo"] < 0 and metrics["kl"] >= 0 and 0 <= metrics["active_units"] <= 4
