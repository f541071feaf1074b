"""BatchNorm over every rank's batch (``GlobalBatchNorm``) in a 2-process gloo group against BatchNorm over the whole
batch in one process: outputs, input gradients, summed parameter gradients and running statistics; and nothing in
it waits on the device."""

import contextlib

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from pipeline.models.batchnorm import GlobalBatchNorm, convert_global_batchnorm
from tests.processes import gloo_ranks
from tests.sync_guard import HostSyncs

BATCH = 8  # 4 a rank


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5)
    )


def _batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(BATCH, 3, 6, 6) * 2 + 0.5


def _step(net: nn.Module, x: torch.Tensor, rows: slice, syncs: HostSyncs | None = None) -> dict:
    """Outputs, input gradients, parameter gradients and running statistics of a training step whose loss weighs
    each output differently (so gradients through the batch statistics are not zero); ``syncs`` guards it."""
    x = x.clone().requires_grad_()
    weights = torch.linspace(-1, 2, BATCH * 5).view(BATCH, 5)[rows]
    with syncs or contextlib.nullcontext():
        out = net(x)
        (out * weights).sum().backward()
    return {
        "out": out.detach().numpy(),
        "x_grad": x.grad.numpy(),
        "grads": [p.grad.numpy() for p in net.parameters()],
        "running": [b.numpy().copy() for name, b in net.named_buffers() if "running" in name],
    }


def _rank_step() -> dict:
    rank = dist.get_rank()
    rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    net = convert_global_batchnorm(_net()).train()
    assert sum(isinstance(m, GlobalBatchNorm) for m in net.modules()) == 2
    syncs = HostSyncs()
    return _step(net, _batch()[rows], rows, syncs) | {"syncs": dict(syncs.seen)}


@pytest.mark.slow  # processes of their own
def test_two_ranks_normalise_and_differentiate_as_one_batch():
    whole = _step(_net().train(), _batch(), slice(None))
    ranks = gloo_ranks(_rank_step)
    np.testing.assert_allclose(np.concatenate([r["out"] for r in ranks]), whole["out"], atol=1e-5)
    np.testing.assert_allclose(np.concatenate([r["x_grad"] for r in ranks]), whole["x_grad"], atol=1e-5)
    for i, expected in enumerate(whole["grads"]):  # summed over ranks: what DDP averages, times the world size
        np.testing.assert_allclose(sum(rank["grads"][i] for rank in ranks), expected, atol=1e-4)
    for rank in ranks:
        for mine, expected in zip(rank["running"], whole["running"], strict=True):
            np.testing.assert_allclose(mine, expected, atol=1e-5)
        assert rank["syncs"] == {}
