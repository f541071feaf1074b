"""The progress line and the data-wait measurement of an epoch."""

import logging
import time

import pytest

from pipeline.console import duration
from pipeline.train.progress import (
    RAY_TRAIN_REPORT_MODULES,
    EpochClock,
    epoch_line,
    progress_line,
    quiet_ray_train_reports,
)


def test_lines_read_as_people_expect():
    assert [duration(s) for s in (0.4, 45, 61, 3599, 3725)] == ["0s", "45s", "1m01s", "59m59s", "1h02m"]
    assert progress_line(1, 6, 130, 480, 812.4, 0.031, 312) == (
        "epoch 2/6  step 130/480 (27%)  812 img/s  data wait 3%  ETA 5m12s"
    )
    assert progress_line(0, 1, 0, 10, 0.0, 0.0, None).endswith("ETA ?")
    assert epoch_line(0, 2, 4.55104, 1234.0, 0.5, 63) == (
        "epoch 1/2 done in 1m03s  loss 4.5510  1,234 img/s  data wait 50% (the rank that waited most)"
    )


class FakeClock:
    """``time.perf_counter`` that only moves when the test says (a loaded machine cannot stretch a sleep)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def slow(self, items, wait_s):
        for item in items:
            self.now += wait_s
            yield item


def test_the_clock_measures_waiting_for_batches_not_the_step(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    shown = []
    clock = EpochClock(0, 1, 10, fake(), 0, interval_s=0.0, show=shown.append)
    for step, _ in enumerate(clock.batches(fake.slow(range(5), 0.02)), start=1):
        fake.now += 0.02  # the step itself: as long as the wait
        clock.step(8, step)
    assert clock.wait_fraction == pytest.approx(0.5)
    assert clock.images == 40 and clock.images_per_s == pytest.approx(40 / 0.2)
    assert len(shown) == 5 and shown[-1].startswith("epoch 1/1  step 5/10 (50%)")
    assert shown[-1].endswith("ETA 0s")  # 5 more steps of about 40 ms


def test_the_line_shows_all_ranks_images_per_s():
    shown = []
    clock = EpochClock(0, 1, 10, time.perf_counter(), 0, interval_s=0.0, show=shown.append, world_size=4)
    clock.started -= 1.0  # one second in
    clock.step(100, 1)
    rate = float(shown[-1].split("  ")[2].split(" img/s")[0].replace(",", ""))
    assert 380 < rate <= 400  # 100 images a second on this rank, 4 ranks


def test_a_resumed_run_counts_its_eta_from_its_own_first_step():
    shown = []
    clock = EpochClock(3, 6, 100, time.perf_counter() - 10.0, 40, interval_s=0.0, show=shown.append)
    clock.step(8, 50)  # 10 steps in 10 s since the resume: 50 to go
    assert shown[-1].endswith("ETA 50s")


def test_nothing_is_shown_before_the_interval_or_on_other_ranks():
    quiet = EpochClock(0, 1, 10, time.perf_counter(), 0, interval_s=3600, show=[].append)
    quiet.step(1, 1)
    silent = EpochClock(0, 1, 10, time.perf_counter(), 0, interval_s=0.0, show=None)
    silent.step(1, 1)
    assert quiet.images == silent.images == 1


def test_ray_trains_report_dumps_are_quieted():
    quiet_ray_train_reports()
    import importlib

    for name in RAY_TRAIN_REPORT_MODULES:
        logger = logging.getLogger(importlib.import_module(name).__file__)
        assert not logger.isEnabledFor(logging.INFO)


def test_a_non_finite_running_loss_stops_the_epoch_naming_the_step():
    import pytest
    import torch

    from pipeline.config import load_config
    from pipeline.train.harness import NonFiniteLoss, check_finite
    from pipeline.train.pretraining import Pretraining

    advice = Pretraining().advice(load_config(None, ["optim.lr=0.5"]))
    check_finite(torch.tensor(12.5), torch.tensor(0.5), 0, 25, 0, advice)  # finite: nothing happens
    with pytest.raises(NonFiniteLoss, match=r"^loss is nan at epoch 1, step 50 \(rank 1\); lower optim.lr \(now 0.5\)"):
        check_finite(torch.tensor(float("nan")), torch.tensor(float("nan")), 1, 50, 1, advice)
