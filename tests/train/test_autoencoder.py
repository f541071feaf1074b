import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.methods import build_method
from pipeline.methods.autoencoder import AutoEncoderOptions
from pipeline.models import EncoderSpec, ModelConfig
from pipeline.optim import OptimConfig, build_optimizer
from pipeline.schedules import warmup_cosine
from tests.helpers import read_split


def _autoencoder(arch="small_cnn", size=28, **method):
    spec = EncoderSpec(arch, 1, size, (0.0,), (1.0,), width=4, embed_dim=16)
    return build_method(AutoEncoderOptions(**method), spec, ModelConfig(encoder=arch))


def test_conv_autoencoder_shapes_and_exported_code():
    method = _autoencoder(bottleneck=7)
    x = torch.rand(5, 1, 28, 28)
    reconstruction, code = method.reconstruct(x)
    assert reconstruction.shape == x.shape and code.shape == (5, 7)
    assert method.encoder(x).shape == (5, 7) and method.spec.bottleneck == 7
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1


def test_sparse_losses_add_their_penalties():
    x = torch.rand(6, 1, 28, 28)
    for sparsity, penalty in (("l1", lambda z: z.abs().sum(1).mean()), ("kl", None)):
        method = _autoencoder(bottleneck=40, sparsity=sparsity, sparsity_weight=0.5).eval()
        reconstruction, code = method.reconstruct(x)
        if sparsity == "kl":
            assert code.min() > 0 and code.max() < 1  # sigmoid codes; k = 40 > what a bottleneck would allow
            rho_hat = code.mean(0)
            penalty_value = (0.05 * torch.log(0.05 / rho_hat) + 0.95 * torch.log(0.95 / (1 - rho_hat))).sum()
        else:
            penalty_value = penalty(code)
        torch.testing.assert_close(method(x), F.mse_loss(reconstruction, x) + 0.5 * penalty_value)


def test_denoising_corrupts_the_input_and_keeps_the_clean_target():
    method = _autoencoder(bottleneck=5, corruption="mask", corruption_amount=1.0)  # every pixel dropped
    x = torch.rand(4, 1, 28, 28)
    method.decoder.eval()  # fixed BatchNorm statistics so the two computations match
    loss = method(x)
    reconstruction, _ = method.reconstruct(torch.zeros_like(x))
    torch.testing.assert_close(loss, F.mse_loss(reconstruction, x))
    method.eval()
    torch.testing.assert_close(method(x), F.mse_loss(method.reconstruct(x)[0], x))  # no corruption at eval


def test_linear_autoencoder_recovers_the_pca_subspace():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 3, generator=generator))[0]  # a 3-d subspace of 4x4 images
    data = (torch.randn(1024, 3, generator=generator) * torch.tensor([3.0, 2.0, 1.0])) @ basis.T
    data = 0.5 + 0.1 * (data + 0.05 * torch.randn(1024, 16, generator=generator))  # spectrum 3, 2, 1, then noise
    images = data.reshape(-1, 1, 4, 4)
    torch.manual_seed(0)
    method = _autoencoder("linear", size=4, bottleneck=3)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-2)
    for _ in range(2000):
        optimizer.zero_grad()
        method(images).backward()
        optimizer.step()
    decoder_span = torch.linalg.qr(method.decoder[0].weight.detach())[0].numpy()  # (16, 3)
    pca_span = PCA(3).fit(data.numpy()).components_.T  # (16, 3)
    cosines = np.linalg.svd(decoder_span.T @ pca_span, compute_uv=False)
    assert cosines.min() > 0.99  # principal angles below about 8 degrees


@pytest.mark.slow  # trains on all 60,000 Fashion-MNIST images
def test_linear_autoencoder_matches_pca_on_fashion_mnist(fashion_shards):
    """k = 32: test MSE within 2% of PCA's, and the top 24 principal directions within 10 degrees of the decoder's
    span (directions 32 and 33 have eigenvalues 0.5% apart, so the last few are nearly degenerate)."""
    train = torch.from_numpy(read_split(fashion_shards, "train")[0]).float() / 255
    test = torch.from_numpy(read_split(fashion_shards, "test")[0]).float() / 255
    pca = PCA(32, random_state=0).fit(train.flatten(1).numpy())
    pca_mse = np.mean((pca.inverse_transform(pca.transform(test.flatten(1).numpy())) - test.flatten(1).numpy()) ** 2)
    torch.manual_seed(0)
    method = build_method(
        AutoEncoderOptions(bottleneck=32),
        EncoderSpec("linear", 1, 28, (0.286,), (0.353,)),
        ModelConfig(encoder="linear"),
    )
    optimizer = build_optimizer(method, OptimConfig(lr=2e-2, weight_decay=0.0), 256)
    epochs, per_epoch = 20, len(train) // 256
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, epochs * per_epoch, per_epoch))
    for _ in range(epochs):
        for batch in torch.randperm(len(train))[: per_epoch * 256].view(per_epoch, 256):
            optimizer.zero_grad()
            method(train[batch]).backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        mse = F.mse_loss(method.reconstruct(test)[0], test).item()
    assert mse == pytest.approx(pca_mse, rel=0.02)
    decoder_span = np.linalg.qr(method.decoder[0].weight.detach().numpy())[0]  # (784, 32)
    cosines = np.linalg.svd(decoder_span.T @ pca.components_[:24].T, compute_uv=False)
    assert np.degrees(np.arccos(cosines.min())) < 10


def test_bad_sparsity_and_linear_without_bottleneck():
    with pytest.raises(ConfigError, match=re.escape("method.sparsity: 'l2'; choose one of none, l1, kl")):
        _autoencoder(sparsity="l2")
    with pytest.raises(ConfigError, match=re.escape("linear needs an autoencoder's method.bottleneck")):
        load_config(None, ["model.encoder=linear"])
