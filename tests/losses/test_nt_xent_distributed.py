"""Two gloo processes with gathered negatives equal one process on the concatenated batch: loss and gradients."""

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline.losses import nt_xent
from tests.processes import gloo_ranks

BATCH, DIM = 4, 6


def _data():
    generator = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2 * BATCH, DIM, generator=generator), torch.randn(2 * BATCH, DIM, generator=generator)
    model = torch.nn.Linear(DIM, 5, bias=False)
    torch.nn.init.normal_(model.weight, generator=generator)
    return x1, x2, model


def _step(model, x1, x2):
    """One SGD step; returns (loss, weight after the step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nt_xent(model(x1), model(x2), 0.3)
    loss.backward()
    optimizer.step()
    return loss.detach(), model.module.weight.detach() if hasattr(model, "module") else model.weight.detach()


def _rank_step():
    """This rank's step on its half of the batch: (loss, weight after the step)."""
    rank = dist.get_rank()
    x1, x2, model = _data()
    local = slice(rank * BATCH, (rank + 1) * BATCH)
    loss, weight = _step(DistributedDataParallel(model), x1[local], x2[local])
    return loss.item(), weight.numpy().copy()  # numpy: pickled by value, not shared memory


@pytest.mark.slow  # processes of their own
def test_two_ranks_equal_one_process_on_the_global_batch():
    x1, x2, model = _data()
    global_loss, global_weight = _step(model, x1, x2)
    outputs = gloo_ranks(_rank_step)
    mean_loss = sum(loss for loss, _ in outputs) / 2
    assert mean_loss == pytest.approx(global_loss.item(), rel=1e-5)
    for _, weight in outputs:
        torch.testing.assert_close(torch.from_numpy(weight), global_weight, rtol=1e-5, atol=1e-6)
