"""BatchNorm over the global batch of all ranks, without a host sync.

PyTorch's ``nn.SyncBatchNorm`` drops the statistics of ranks with empty inputs by a boolean mask, a host sync per
layer per forward on GPUs (about 108 a ResNet-50 SimCLR step). Here each layer all-reduces the per-channel sum, sum
of squares and count in one differentiable collective (``torch.distributed.nn.functional.all_reduce``: its backward
all-reduces the gradients, so each rank's gradient is the global batch's) and normalises with them; nothing is read
back to the host. Every rank must bring a non-empty batch, as the loader's equal batches do.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """``x`` ``(B, C, ...)`` normalised per channel with the mean and (biased) variance of every rank's ``x``
    together while training in a process group; the running statistics (unbiased variance) as BatchNorm keeps
    them. In evaluation, or alone, it is BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-d input (B, C, ...), got {input.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        values = x.float()
        count = torch.full((1,), x.numel() // x.shape[1], dtype=torch.float32, device=x.device)
        totals = all_reduce(torch.cat([values.sum(dims), values.square().sum(dims), count]))
        channels = x.shape[1]
        total = totals[-1]
        mean = totals[:channels] / total
        variance = (totals[channels : 2 * channels] / total - mean.square()).clamp_min(0.0)
        if self.track_running_stats:
            self._update_running(mean.detach(), variance.detach() * total / (total - 1).clamp_min(1.0))
        shape = [1, channels, *[1] * (x.dim() - 2)]
        out = (values - mean.view(shape)) * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_variance.to(self.running_var.dtype), factor)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by a :class:`GlobalBatchNorm` holding its parameters and
    running statistics (as ``nn.SyncBatchNorm.convert_sync_batchnorm`` converts; before the model moves to its
    device)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        converted.load_state_dict(module.state_dict())
        for mine, theirs in zip(converted.parameters(), module.parameters(), strict=True):
            mine.requires_grad_(theirs.requires_grad)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_global_batchnorm(child))
    return module
