"""Stopping a run on request. SIGTERM (a scheduler's or ``kill``'s stop) does what Ctrl-C does: Ray Train's own
SIGINT handler aborts the run gracefully (elsewhere SIGINT raises ``KeyboardInterrupt``), and the run is then
recorded as stopped (:class:`~pipeline.errors.RunStopped`) instead of vanishing."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from pipeline.errors import RunStopped

SIGTERM_RECEIVED = threading.Event()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """For the block, SIGTERM interrupts as SIGINT does; in the main thread only (a Tune trial's thread has no
    signals of its own). Enter it after Ray's driver has installed its handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    SIGTERM_RECEIVED.clear()

    def stop(signum: int, frame: object) -> None:
        SIGTERM_RECEIVED.set()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def raise_if_stopped() -> None:
    """Raise :class:`~pipeline.errors.RunStopped` once SIGTERM arrived: Ray Train returns normally from a run it
    aborted, and its last checkpoint is where a rerun resumes."""
    if SIGTERM_RECEIVED.is_set():
        raise RunStopped("stopped by SIGTERM")
