"""The host-sync guard sees each kind of stall, and nothing else."""

import torch

from tests.sync_guard import HostSyncs


def test_the_guard_sees_each_kind_of_host_sync_and_passes_device_work():
    x = torch.rand(4)
    mask = x > 0.5
    with HostSyncs() as syncs:
        x.sum().item()
        x[mask]
        x.nonzero()
        x.cpu()
        x.to("cpu")
        x.tolist()
        x.repeat_interleave(torch.ones(4, dtype=torch.long))
    recorded = {what for what, _ in syncs.seen}
    assert recorded == {"item", "_local_scalar_dense", "index", "nonzero", "cpu", "to", "tolist", "repeat_interleave"}
    assert all(where.startswith("tests/test_sync_guard.py:") for _, where in syncs.seen)
    with HostSyncs() as syncs:
        x.to("cpu", non_blocking=True)
        torch.where(mask, x, 0.0) * 2
        x.repeat_interleave(torch.ones(4, dtype=torch.long), output_size=4)
        x[1:3].sum(0)
    assert not syncs.seen
