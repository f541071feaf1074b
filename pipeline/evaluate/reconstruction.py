"""Reconstruction quality of autoencoders and VAEs on the test split, beside PCA with the same ``k``."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA

from augment.presets import to_unit_float
from pipeline.data import ShardLoader

ACTIVE_UNIT_VARIANCE = 0.01  # a latent unit is active when Cov_x(E_q[z]) > 0.01 (Burda et al., 2016)


def pca_reconstruction_mse(train: np.ndarray, test: np.ndarray, k: int) -> float:
    """Per-pixel MSE of ``test (M, D)`` rebuilt from the top ``k`` principal components of ``train (N, D)``."""
    pca = PCA(k, random_state=0).fit(train)
    return float(np.mean((pca.inverse_transform(pca.transform(test)) - test) ** 2))


@torch.no_grad()
def reconstruction_metrics(
    method: torch.nn.Module, location: str, batch_size: int, device: torch.device, url_template: str | None = None
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """``(metrics, first images, their reconstructions)`` over the test split: ``recon_mse`` (per pixel); for a
    VAE also ``elbo`` (nats per image, one posterior sample), ``kl`` and ``active_units``."""
    loader = ShardLoader(location, "test", batch_size, rank=0, world_size=1, num_workers=1, shuffle=False,
                         drop_last=False, url_template=url_template)
    method.eval().to(device)
    squared, pixels, elbo, kl, means, first = 0.0, 0, 0.0, 0.0, [], None
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    for images, _, _ in loader:
        x = to_unit_float(images.to(device))
        reconstruction, _ = method.reconstruct(x)
        squared += (reconstruction - x).pow(2).sum().item()
        pixels += x.numel()
        if first is None:
            first = (x[:8].cpu(), reconstruction[:8].cpu())
        if hasattr(method, "terms"):  # a VAE
            nll, kl_terms, mu = method.terms(x)
            elbo -= (nll + kl_terms.sum(1)).sum().item()
            kl += kl_terms.sum().item()
            means.append(mu.cpu())
    torch.random.set_rng_state(generator_state)
    count = loader.manifest.split("test").num_samples
    metrics = {"recon_mse": squared / pixels}
    if means:
        variance = torch.cat(means).var(0)
        metrics |= {"elbo": elbo / count, "kl": kl / count,
                    "active_units": float((variance > ACTIVE_UNIT_VARIANCE).sum())}
    return metrics, *first
