"""The one place that starts or joins Ray: ``$RAY_ADDRESS`` (set by ``ray job submit``) or a local instance. What
Ray says of its own workings at WARNING or ERROR level without it being the user's news (:data:`BENIGN`) is left out
of what the driver prints; every other line, and every real error, still shows."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

BENIGN = (
    "Token authentication is enabled for this Ray cluster",  # a local Ray started with the secure default
    # Ray Train's PreemptionWatcher actor is made restartable with arguments in the object store: Ray core logs this
    # at ERROR level from the Train controller on every run
    "Actor with class name: 'PreemptionWatcher'",
    "Detected that the Ray Train controller actor",  # its placement group freed once a trial was stopped
)


def _benign(text: str) -> bool:
    return any(marker in text for marker in BENIGN)


class _NotBenign(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _benign(record.getMessage())


def _without_benign(handler: Callable[[dict], Any], batch: dict) -> None:
    """Ray's printer of the workers' output, handed ``batch`` without its benign lines."""
    lines = [line for line in batch.get("lines", []) if not _benign(line)]
    if lines:
        handler({**batch, "lines": lines})


def connect() -> None:
    import ray
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    if ray.is_initialized():
        return
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_NotBenign())
    ray.init(address=os.environ.get("RAY_ADDRESS"), configure_logging=False)
    dispatcher.handlers = [
        (name, functools.partial(_without_benign, handler)) if name == "ray_print_logs" else (name, handler)
        for name, handler in dispatcher.handlers
    ]


def resources() -> dict[str, float]:
    """What the cluster has (``CPU``, ``GPU``, memory, ...), joining or starting Ray first."""
    import ray

    connect()
    return ray.cluster_resources()


def alive_nodes() -> int:
    """The nodes of the cluster Ray runs (joining or starting it first)."""
    import ray

    connect()
    return sum(node["Alive"] for node in ray.nodes())
