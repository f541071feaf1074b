"""What a run prints for people: durations as they read them and named phases with their times."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


def duration(seconds: float) -> str:
    """``3h05m``, ``12m40s`` or ``45s``."""
    seconds = int(round(seconds))  # noqa: RUF046 (a numpy float32 rounds to a float32)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """Print ``what ...`` and, when the block ends, ``what done in 1m03s``: long work keeps its reader informed."""
    started = time.perf_counter()
    print(f"{what} ...", flush=True)
    yield
    print(f"{what} done in {duration(time.perf_counter() - started)}", flush=True)
