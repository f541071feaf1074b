"""Independent evaluation jobs (probes, kNN) at once on the driver's cores; on a GPU one after another.

On CPUs the jobs run in threads (numpy, scikit-learn and torch release the GIL in their kernels), each with
``cores / threads`` BLAS and torch threads: the probes' skinny matrix products do not scale across threads (on the
project's 2-core machine scikit-learn's probe of 60,000 x 256 features took 28 s with 2 BLAS threads and 16 s with
1), so two probes on one core each finish in about the time of one. On a GPU the jobs would only share it, and
each holds its features there (5.2 GB of float16 at ImageNet's size): one at a time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from threadpoolctl import threadpool_limits

T = TypeVar("T")


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def side_by_side(
    jobs: Mapping[str, Callable[[], T]], device: torch.device, quiet: Sequence[type[Warning]] = ()
) -> dict[str, T]:
    """``{name: job()}`` for every job, run as above for ``device``, warnings of the ``quiet`` categories silenced
    (here, around the threads: filters are process-wide); the first job's error is raised."""
    threads = min(len(jobs), cores()) if device.type == "cpu" else 1
    per_job = max(1, cores() // threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(per_job)
    try:
        with warnings.catch_warnings(), threadpool_limits(per_job), ThreadPoolExecutor(threads) as pool:
            for category in quiet:
                warnings.simplefilter("ignore", category)
            futures = {name: pool.submit(job) for name, job in jobs.items()}
            return {name: future.result() for name, future in futures.items()}
    finally:
        torch.set_num_threads(previous)
