"""The one place that starts or joins Ray: ``$RAY_ADDRESS`` (set by ``ray job submit``) or a local instance."""

from __future__ import annotations

import os


def connect() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), configure_logging=False)


def resources() -> dict[str, float]:
    """What the cluster has (``CPU``, ``GPU``, memory, ...), joining or starting Ray first."""
    import ray

    connect()
    return ray.cluster_resources()
