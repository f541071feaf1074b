"""Feature matrices read a chunk of rows at a time, so that evaluation at ImageNet size (1.28M x 2,048) never
holds more than its half-precision features (memory-mapped on the host, or on the GPU) and a chunk in float32.

:class:`FeatureRows` is what the linear probe and kNN iterate over: a matrix ``(N, D)`` of any float dtype (a
memory-mapped float16 ``.npy``, typically), its labels, optionally a subset of its rows, and the transform each
float32 chunk gets (standardisation, L2 normalisation), in place. Sets whose float32 form fits
:data:`IN_MEMORY_BYTES` are transformed once and kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

CHUNK_VALUES = {"cpu": 1 << 22, "accelerator": 1 << 25}  # feature values per chunk: 16 MiB of float32 on CPUs,
# where a chunk's copies are host memory; 128 MiB on a GPU, where each chunk costs a few kernel launches
IN_MEMORY_BYTES = 1 << 29  # float32 chunks kept after their first pass while they fit: 512 MiB
Transform = Callable[[torch.Tensor], torch.Tensor]


def chunk_rows(dim: int, device: torch.device) -> int:
    """Rows per chunk of a ``dim``-wide matrix on ``device``: :data:`CHUNK_VALUES` values, at least one row."""
    values = CHUNK_VALUES["cpu" if device.type == "cpu" else "accelerator"]
    return max(1, values // max(1, dim))


@dataclass
class FeatureRows:
    """Rows of ``source (N, D)`` (numpy, memory-mapped or not, or a tensor on ``device``) with ``labels (N,)``
    (int64 on ``device``); ``rows`` (sorted int64 indices into ``source``, or ``None`` for all) picks a subset and
    ``transform`` is applied in place to each float32 chunk."""

    source: np.ndarray | torch.Tensor
    labels: torch.Tensor
    device: torch.device
    rows: np.ndarray | None = None
    transform: Transform | None = None
    chunk: int | None = None
    _kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def of(
        cls, source: np.ndarray, labels: np.ndarray, device: torch.device | str = "cpu", chunk: int | None = None
    ) -> FeatureRows:
        """``source (N, D)`` and ``labels (N,)`` for iteration on ``device``: on an accelerator the matrix is copied
        there once in its own dtype (float16 features of 1.28M x 2,048 are 5.2 GB), on the CPU it stays where it is."""
        device = torch.device(device)
        if device.type != "cpu":
            source = torch.as_tensor(source).to(device)
        return cls(source, torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device), device, chunk=chunk)

    def __len__(self) -> int:
        return len(self.source) if self.rows is None else len(self.rows)

    @property
    def dim(self) -> int:
        return self.source.shape[1]

    def subset(self, rows: np.ndarray) -> FeatureRows:
        """These rows (positions in this set) only, in increasing order."""
        rows = np.sort(rows)
        chosen = rows if self.rows is None else self.rows[rows]
        return replace(self, rows=chosen, labels=self.labels[torch.as_tensor(rows, device=self.device)], _kept=None)

    def transformed(self, transform: Transform) -> FeatureRows:
        """The same rows with ``transform`` applied (in place) to each float32 chunk."""
        return replace(self, transform=transform, _kept=None)

    def chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(features (n, D) float32, labels (n,))`` chunk by chunk, transformed, on the device."""
        if self._kept is not None:
            yield from self._kept
            return
        keep = len(self) * self.dim * 4 <= IN_MEMORY_BYTES
        kept = []
        size = self.chunk or chunk_rows(self.dim, self.device)
        for start in range(0, len(self), size):
            x = self._read(start, min(len(self), start + size))
            x = self.transform(x) if self.transform else x
            pair = (x, self.labels[start : start + len(x)])
            if keep:
                kept.append(pair)
            yield pair
        if keep:
            self._kept = kept

    def _read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of the set as a new float32 tensor on the device."""
        if isinstance(self.source, torch.Tensor):
            if self.rows is None:
                return self.source[start:stop].to(torch.float32, copy=True)
            index = torch.as_tensor(self.rows[start:stop], device=self.device)
            return self.source.index_select(0, index).float()
        part = self.source[start:stop] if self.rows is None else self.source[self.rows[start:stop]]
        return torch.from_numpy(np.array(part, dtype=np.float32)).to(self.device)

    @torch.no_grad()
    def column_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (D,), std (D,))`` of the rows' columns, float32 from float64 sums, population std (as
        scikit-learn's ``StandardScaler``); constant columns get std 1."""
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        squares = torch.zeros_like(total)
        for x, _ in replace(self, transform=None, _kept=None).chunks():
            x = x.double()
            total += x.sum(0)
            squares += x.square().sum(0)
        mean = total / max(1, len(self))
        std = (squares / max(1, len(self)) - mean.square()).clamp_(min=0).sqrt_()
        return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()


def standardiser(mean: torch.Tensor, std: torch.Tensor) -> Transform:
    """``x -> (x - mean) / std``, in place."""
    return lambda x: x.sub_(mean).div_(std)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x (n, D)`` with every row scaled to unit L2 norm (zero rows stay zero), in place."""
    return x.div_(x.norm(dim=1, keepdim=True).clamp_(min=1e-12))


def as_unit_rows(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x (M, D)`` as float32 rows of unit L2 norm on ``device`` (as ``F.normalize``)."""
    return F.normalize(torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x, device=device).float(), dim=1)
