"""What a rank measures while it trains, and the progress line rank 0 prints at a steady interval.

``data_wait_fraction`` is the share of an epoch's wall time a rank spent waiting for its next batch (the loader
fell behind the step); near 0 means the data path keeps the device busy.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from pipeline.console import duration

PROGRESS_INTERVAL_S = 30.0
# Ray Train logs every report (the whole metrics dict, with node ids) and every checkpoint at INFO, from loggers
# named after their files; our progress line and the epoch's MLflow metrics say the same for people.
RAY_TRAIN_REPORT_MODULES = ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage")


def quiet_ray_train_reports() -> None:
    """Raise Ray Train's per-report and per-checkpoint loggers to WARNING in this process."""
    import importlib

    for name in RAY_TRAIN_REPORT_MODULES:
        module = importlib.import_module(name)
        for logger_name in (module.__name__, module.__file__):
            logging.getLogger(logger_name).setLevel(logging.WARNING)


@contextlib.contextmanager
def lines_printed(show: bool) -> Iterator[None]:
    """For the block, the harness's lines (``pipeline.train`` at INFO: progress, epochs) printed on stdout as they
    are, as a Ray Train worker's are printed by Ray; nothing with ``show`` false (a search trial)."""
    logger = logging.getLogger("pipeline.train")
    if not show:
        yield
        return
    handler, level, propagate = logging.StreamHandler(sys.stdout), logger.level, logger.propagate
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once, whatever handlers the application has
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def progress_line(
    epoch: int,
    epochs: int,
    step: int,
    total_steps: int,
    images_per_s: float,
    wait_fraction: float,
    eta_s: float | None,
) -> str:
    """``epoch 2/6  step 130/480 (27%)  812 img/s  data wait 3%  ETA 5m12s`` (epochs and steps counted from 1)."""
    eta = duration(eta_s) if eta_s is not None else "?"
    return (
        f"epoch {epoch + 1}/{epochs}  step {step}/{total_steps} ({100 * step / max(1, total_steps):.0f}%)  "
        f"{images_per_s:,.0f} img/s  data wait {100 * wait_fraction:.0f}%  ETA {eta}"
    )


class EpochClock:
    """Times one epoch of one rank: ``for batch in clock.batches(loader)`` measures the wait for each batch,
    ``clock.step(images, step)`` counts a finished step and, on a printing rank, prints :func:`progress_line`
    every ``interval_s``, its images/s this rank's times ``world_size`` (ranks step together). The ETA runs from
    the steps this run has done (a resumed run counts from its start)."""

    def __init__(
        self,
        epoch: int,
        epochs: int,
        total_steps: int,
        run_started: float,
        run_first_step: int,
        interval_s: float = PROGRESS_INTERVAL_S,
        show: Callable[[str], None] | None = None,
        world_size: int = 1,
    ) -> None:
        self.epoch, self.epochs, self.total_steps, self.show = epoch, epochs, total_steps, show
        self.world_size = world_size
        self.run_started, self.run_first_step, self.interval_s = run_started, run_first_step, interval_s
        self.started = self.last_shown = time.perf_counter()
        self.waited, self.images = 0.0, 0

    def batches(self, loader: Iterable) -> Iterator:
        iterator = iter(loader)
        while True:
            before = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - before
            yield batch

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def wait_fraction(self) -> float:
        return self.waited / max(self.elapsed, 1e-9)

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.elapsed, 1e-9)

    def step(self, images: int, step: int) -> None:
        self.images += images
        now = time.perf_counter()
        if self.show is None or now - self.last_shown < self.interval_s:
            return
        self.last_shown = now
        done = step - self.run_first_step
        eta = (self.total_steps - step) * (now - self.run_started) / done if done > 0 else None
        self.show(
            progress_line(
                self.epoch,
                self.epochs,
                step,
                self.total_steps,
                self.images_per_s * self.world_size,
                self.wait_fraction,
                eta,
            )
        )


def epoch_line(epoch: int, epochs: int, loss: float, images_per_s: float, wait_fraction: float, seconds: float) -> str:
    """``epoch 2/6 done in 1m03s  loss 4.5510  812 img/s  data wait 3% (the rank that waited most)``."""
    return (
        f"epoch {epoch + 1}/{epochs} done in {duration(seconds)}  loss {loss:.4f}  {images_per_s:,.0f} img/s  "
        f"data wait {100 * wait_fraction:.0f}% (the rank that waited most)"
    )
