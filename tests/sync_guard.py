"""What would stall a CUDA stream, recorded on any device (the CPU included): ``with HostSyncs() as syncs: ...``,
then ``syncs.seen`` counts each ``(what, where)``: ``where`` is the first frame outside torch.

Two kinds: ops whose result size or value the host must read (``_local_scalar_dense`` behind ``.item()``,
``float()`` and ``if tensor``; ``nonzero``; ``masked_select``; indexing with a boolean mask; ``repeat_interleave``
without ``output_size``; ``equal``), seen by a dispatch mode; and copies between host and device (``.cpu()``,
``.item()``, ``.tolist()``, ``.numpy()``, and ``.to()`` naming a device without ``non_blocking=True``: on a GPU a
blocking copy of a host tensor onto it), seen by a function mode, so they show even when both sides are the CPU.
Left out: torch's optimizers reading their step counts, which they keep on the host (``capturable=False``)."""

from __future__ import annotations

import collections
import traceback
from pathlib import Path
from typing import Self

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
READS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.equal.default,
    aten.is_nonzero.default,
}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
COPIES = {"cpu", "item", "tolist", "numpy", "cuda"}
TORCH = str(Path(torch.__file__).parent)
HOST_STEP_COUNTS = str(Path(torch.__file__).parent / "optim")


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.startswith(TORCH) and frame.filename != __file__:
            return f"{'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno}"
    return "?"


def _reads_a_host_step_count() -> bool:
    """Whether the innermost frame outside torch's machinery and this module is in one of torch's optimizers (they
    keep their step counts on the host and read them there)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(HOST_STEP_COUNTS):
            return True
        if frame.filename != __file__ and not frame.filename.startswith(TORCH):
            return False
    return False


def _boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class _Reads(TorchDispatchMode):
    def __init__(self, seen: collections.Counter) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        sized = func is aten.repeat_interleave.Tensor and (kwargs or {}).get("output_size") is None
        if (func in READS and not _reads_a_host_step_count()) or sized or (func in INDEXING and _boolean_index(args)):
            self.seen[str(func.overloadpacket.__name__), _caller()] += 1
        return func(*args, **(kwargs or {}))


class _Copies(TorchFunctionMode):
    def __init__(self, seen: collections.Counter) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        names_device = kwargs.get("device") is not None or any(isinstance(a, torch.device | str) for a in args[1:])
        blocking_move = name == "to" and names_device and not kwargs.get("non_blocking")
        if (name in COPIES or blocking_move) and not _reads_a_host_step_count():
            self.seen[name, _caller()] += 1
        return func(*args, **kwargs)


class HostSyncs:
    def __init__(self) -> None:
        self.seen: collections.Counter = collections.Counter()
        self._modes = (_Copies(self.seen), _Reads(self.seen))

    def __enter__(self) -> Self:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc_info)
