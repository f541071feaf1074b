"""The files evaluation's features travel in, at any size: every rank writes its share of a split as one ``.npy``
per column (labels, indices, each kind of features), features in half precision; the driver joins the ranks'
files row-wise into one local ``.npy`` a block at a time and memory-maps it, so that it never holds a whole
matrix in its own memory (1.28M x 2,048 float16 features are 5.2 GB; it once held several float32 copies:
``benchmarks/evaluation_memory.py``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline import storage

log = logging.getLogger(__name__)
HALF_MAX = float(np.finfo(np.float16).max)
BLOCK_BYTES = 1 << 26  # read and written at a time while joining: 64 MiB


def half_if_fits(features: np.ndarray, what: str) -> np.ndarray:
    """Float ``features (N, D)`` as float16 (11-bit significands: a relative rounding of at most 2^-11, which the
    probe, kNN and anomaly scores do not see) when every value is within float16's range; kept as they are, with
    a warning naming ``what``, otherwise."""
    if features.size and not np.all(np.abs(features) <= HALF_MAX):
        log.warning("evaluation: %s reach beyond float16's range (65,504): kept in %s", what, features.dtype)
        return features
    return features.astype(np.float16)


def _header(handle: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of the C-ordered ``.npy`` open in ``handle``, which is left at its first data byte."""
    major, _ = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(handle)
    if fortran_order:
        raise ValueError(f"{name}: a Fortran-ordered array; the ranks write C order")
    return shape, dtype


def join_rows(sources: list[str], path: Path, positions: np.ndarray | None = None) -> np.ndarray:
    """The rows of the ``.npy`` files ``sources`` (paths or URLs; the same shape past their rows unless empty),
    taken in order, written to rows ``positions`` (default: in order) of the ``.npy`` at ``path`` in the dtype
    they promote to, a block at a time; returned memory-mapped (copy-on-write: its pages are the file's until
    written)."""
    headers = []
    for source in sources:
        with storage.reader(source) as handle:
            headers.append(_header(handle, source))
    rows = [(source, header) for source, header in zip(sources, headers, strict=True) if header[0][0]]
    sources, headers = map(list, zip(*rows, strict=True)) if rows else (sources[:1], headers[:1])  # (a rank's share
    # may be empty, its shape and dtype those of nothing)
    rest = {shape[1:] for shape, _ in headers}
    if len(rest) > 1:
        raise ValueError(f"{path.name}: the ranks' files differ in shape past their rows: {sorted(rest)}")
    shape = (sum(shape[0] for shape, _ in headers), *rest.pop())
    positions = np.arange(shape[0]) if positions is None else positions
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.result_type(*(d for _, d in headers)), shape=shape)
    row = 0
    for source, (source_shape, dtype) in zip(sources, headers, strict=True):
        with storage.reader(source) as handle:
            _header(handle, source)
            for block in _blocks(handle, source_shape[0], shape[1:], dtype):
                out[positions[row : row + len(block)]] = block
                row += len(block)
    out.flush()
    del out
    return np.load(path, mmap_mode="c")


def _blocks(handle: BinaryIO, rows: int, rest: tuple[int, ...], dtype: np.dtype) -> Iterator[np.ndarray]:
    """The ``rows`` rows (of shape ``rest``, values of ``dtype``) that follow in ``handle``, about
    :data:`BLOCK_BYTES` at a time."""
    row_bytes = dtype.itemsize * int(np.prod(rest, dtype=np.int64))
    per_block = max(1, BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, rows, per_block):
        count = min(per_block, rows - start)
        data = handle.read(count * row_bytes)
        if len(data) != count * row_bytes:
            raise ValueError(f"a rank's features file ends early: {len(data)} of {count * row_bytes} bytes")
        yield np.frombuffer(data, dtype).reshape(count, *rest)
