"""VAE and beta-VAE: the encoder's features feed two linear heads, the Gaussian posterior's mean and
log-variance; a reparameterised sample ``z = mu + sigma * eps`` is decoded, and the loss is ``-ELBO``
(reconstruction summed over pixels plus ``beta`` times the KL summed over latent dimensions, averaged over the
batch). The KL weight ramps from 0 to ``beta`` over ``method.kl_anneal_steps`` steps against posterior collapse;
its step counter is a buffer, so it is checkpointed. The exported encoder gives the posterior mean ``(B, k)``.

Collapse is watched while training: each epoch reports the KL of every latent dimension (``train_kl_dim_j``,
nats per image), their sum ``train_kl`` and ``train_active_units`` (see :func:`active_units`) over the epoch's
images, and warns when fewer than half of the units are active.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
from annotated_types import Ge, Gt
from torch import nn

from pipeline.distributed import world
from pipeline.losses import active_units, bernoulli_nll, gaussian_kl, gaussian_nll, negative_elbo
from pipeline.methods.base import MethodOptions, ReconstructionMethod
from pipeline.methods.capabilities import Capability
from pipeline.models import EncoderSpec, ModelConfig
from pipeline.models.encoders import build_features
from pipeline.options import When
from pipeline.schedules import kl_weight

log = logging.getLogger(__name__)


@dataclass
class VAEOptions(MethodOptions):
    name: ClassVar[str] = "vae"
    bottleneck: Annotated[int, Gt(0), "latent size k"] = 32
    beta: Annotated[float, Ge(0), "KL weight (beta-VAE when above 1)"] = 1.0
    kl_anneal_steps: Annotated[int, Ge(0), "steps over which the KL weight ramps from 0 to beta"] = 0
    free_bits: Annotated[float, Ge(0), "nats per latent dimension that cost nothing"] = 0.0
    likelihood: Annotated[
        Literal["bernoulli", "gaussian"], "`bernoulli` (pixels in [0, 1]) or `gaussian` (std `decoder_std`)"
    ] = "bernoulli"
    decoder_std: Annotated[float, Gt(0), When("likelihood", "gaussian"), "the decoder's std"] = 0.1


class VAE(ReconstructionMethod):
    Options = VAEOptions
    capabilities = frozenset({Capability.RECONSTRUCTS, Capability.GENERATIVE})

    def __init__(self, options: VAEOptions, spec: EncoderSpec, model: ModelConfig) -> None:
        super().__init__(spec, options.bottleneck)
        self.features, dim = build_features(dataclasses.replace(self.spec, bottleneck=0))
        self.mean = nn.Linear(dim, options.bottleneck)
        self.build_decoder()  # the order of the old layout, so a seed gives the same initial weights
        self.logvar = nn.Linear(dim, options.bottleneck)
        self.beta, self.anneal_steps, self.free_bits = options.beta, options.kl_anneal_steps, options.free_bits
        self.likelihood, self.decoder_std = options.likelihood, options.decoder_std
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))
        self._epoch_sums: torch.Tensor | None = None  # per dimension: KL, mu, mu^2 (3, k); not checkpointed
        self._epoch_count = 0

    @property
    def encoder(self) -> nn.Sequential:
        """Images -> posterior mean ``(B, k)``: a view of the features and the mean head (the layout ``self.spec``
        builds), made on each access so that it holds the modules as they are now (after conversions)."""
        view = nn.Sequential(*self.features, self.mean)
        view.training = self.training  # the container's flag only: the modules keep their own
        return view

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``(B, k)``."""
        features = self.features(x)
        return self.mean(features), self.logvar(features)

    def elbo_terms(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(nll (B,), kl (B, k), mu (B, k))``; ``sample=False`` decodes the mean."""
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        squashed = isinstance(self.decoder[-1], nn.Sigmoid)  # conv decoders end in a sigmoid, linear ones do not
        logits = self.decoder[:-1](z) if squashed else self.decoder(z)
        if self.likelihood == "bernoulli":
            nll = bernoulli_nll(logits, x)
        else:
            nll = gaussian_nll(torch.sigmoid(logits) if squashed else logits, x, self.decoder_std)
        return nll, gaussian_kl(mu, logvar), mu

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction from the posterior mean (B, C, H, W), mu (B, k))``."""
        mu, _ = self.posterior(x)
        return self.decoder(mu), mu

    def current_beta(self) -> float:
        return float(kl_weight(int(self.anneal_step), self.anneal_steps, self.beta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nll, kl, mu = self.elbo_terms(x)
        if self.training:
            sums = torch.stack([kl.sum(0), mu.sum(0), mu.pow(2).sum(0)]).detach().float()
            self._epoch_sums = sums if self._epoch_sums is None else self._epoch_sums + sums
            self._epoch_count += len(x)
        return negative_elbo(nll, kl, kl_weight(self.anneal_step, self.anneal_steps, self.beta), self.free_bits)

    def epoch_metrics(self, total: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """``kl_weight`` (the annealed beta after the epoch's last step) and ``train_kl``, ``train_kl_dim_j`` and
        ``train_active_units`` of this epoch's images over all ranks."""
        if self._epoch_sums is None:
            return {"kl_weight": self.current_beta()}
        sums = total(self._epoch_sums)
        count = total(torch.tensor(float(self._epoch_count), device=sums.device)).item()
        self._epoch_sums, self._epoch_count = None, 0
        kl, active = sums[0] / count, active_units(sums[1], sums[2], count)
        k = len(kl)
        if active < k / 2 and world()[0] == 0:
            log.warning(
                "posterior collapse: %d of %d latent units are active (KL %.2f nats); lengthen "
                "method.kl_anneal_steps, lower method.beta or set method.free_bits",
                active,
                k,
                kl.sum().item(),
            )
        return {
            "kl_weight": self.current_beta(),
            "train_kl": kl.sum().item(),
            "train_active_units": float(active),
            **{f"train_kl_dim_{j}": value for j, value in enumerate(kl.tolist())},
        }

    def after_step(self, step: int, total_steps: int) -> None:
        self.anneal_step.add_(1)
