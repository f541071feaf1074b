"""Reconstruction quality of autoencoders and VAEs on the test split, beside PCA with the same ``k``, and the
per-image errors (and negative ELBOs) that serve as anomaly scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA

from augment.presets import to_unit_float
from pipeline.data import LabeledShards
from pipeline.losses import active_units
from pipeline.methods.capabilities import Capability, Reconstructs


def pca_reconstruction_errors(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """Per-image MSE ``(M,)`` of ``test (M, D)`` rebuilt from the top ``k`` principal components of ``train (N, D)``."""
    pca = PCA(k, random_state=0).fit(train)
    return np.mean((pca.inverse_transform(pca.transform(test)) - test) ** 2, axis=1)


@dataclass
class Reconstructions:
    """A method's reconstructions of the test split: ``metrics`` (``recon_mse`` per pixel; for a VAE also
    ``elbo`` in nats per image with one posterior sample, ``kl`` and ``active_units``), ``errors (N,)`` per-image
    MSE with their ``labels (N,)``, the first 8 ``originals`` and ``reconstructions`` ``(8, C, H, W)``, and for a
    VAE ``negative_elbo (N,)`` per image (else ``None``)."""

    metrics: dict[str, float]
    errors: np.ndarray
    labels: np.ndarray
    originals: torch.Tensor
    reconstructions: torch.Tensor
    negative_elbo: np.ndarray | None = None


@torch.no_grad()
def reconstruct_split(method: Reconstructs, shards: LabeledShards, device: torch.device) -> Reconstructions:
    """Run ``method.reconstruct`` (and, for a generative method, its ``elbo_terms``) over the test split of
    ``shards``, in order, seeded."""
    loader = shards.loader("test")
    method.eval().to(device)
    generative = Capability.GENERATIVE in method.capabilities
    errors, labels, negative_elbo, kl, mean_sum, square_sum, first = [], [], [], 0.0, 0.0, 0.0, None
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    for images, batch_labels, _ in loader:
        x = to_unit_float(images.to(device))
        reconstruction, _ = method.reconstruct(x)
        errors.append((reconstruction - x).pow(2).flatten(1).mean(1).cpu().numpy())
        labels.append(batch_labels.numpy())
        if first is None:
            first = (x[:8].cpu(), reconstruction[:8].cpu())
        if generative:
            nll, kl_terms, mu = method.elbo_terms(x)
            negative_elbo.append((nll + kl_terms.sum(1)).cpu().numpy())
            kl += kl_terms.sum().item()
            mean_sum, square_sum = mean_sum + mu.sum(0), square_sum + mu.pow(2).sum(0)
    torch.random.set_rng_state(generator_state)
    errors_all = np.concatenate(errors)
    metrics = {"recon_mse": float(errors_all.mean())}
    negative_elbo_all = None
    if generative:
        count, negative_elbo_all = len(errors_all), np.concatenate(negative_elbo)
        metrics |= {
            "elbo": float(-negative_elbo_all.mean()),
            "kl": kl / count,
            "active_units": float(active_units(mean_sum, square_sum, count)),
        }
    return Reconstructions(metrics, errors_all, np.concatenate(labels), *first, negative_elbo_all)
