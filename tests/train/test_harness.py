"""The training loop itself, in this process or in a 2-process gloo group (tests/in_process.py): a run stopped after a
checkpoint and resumed in a scrambled random state ends where an uninterrupted run ends, and a diverging loss stops
at its step with one line, before its epoch's checkpoint. Ray's own part (a killed worker restarted from storage) is
test_reliability.py's."""

import contextlib
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from pipeline.config import load_config
from pipeline.data import read_manifest
from pipeline.evaluate.suite import monitors
from pipeline.job import evaluation_plan
from pipeline.train import NonFiniteLoss
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.harness import LOSS_READ_EVERY, train
from pipeline.train.pretraining import Pretraining
from tests.in_process import InProcess, Interrupted
from tests.processes import gloo_ranks

STEPS = 8  # per epoch: enough to cross epochs, few enough for seconds


@pytest.fixture(autouse=True)
def _threads():
    """The harness sets this process's thread count (``train.cpus_per_worker``): give it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(shards, *overrides):
    return load_config(
        None,
        [
            f"data.shards={shards}",
            "data.batch_size=64",
            "data.num_workers=0",
            "model.width=4",
            "model.embed_dim=8",
            "train.epochs=3",
            f"train.max_steps_per_epoch={STEPS}",
            "optim.warmup_epochs=0",
            *overrides,
        ],
    )


def _scramble(rank: int) -> None:
    """Every global random stream somewhere else, as a new process would start them."""
    torch.manual_seed(12345 + rank), np.random.seed(12345 + rank), random.seed(12345 + rank)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.name=vae", "method.bottleneck=8"],
        ["method.name=autoencoder", "method.bottleneck=8", "method.corruption=mask", "method.corruption_amount=0.5"],
    ],
    ids=["vae", "denoising-autoencoder"],
)
def test_a_resumed_run_continues_the_random_streams(synthetic_shards, tmp_path, overrides):
    """The VAE's reparameterisation noise and the denoising corruption draw from the global generators, the loader
    from its own: a run stopped after its first checkpoint and resumed from a scrambled random state (as a new
    process starts) continues every stream, so its epochs and weights are the uninterrupted run's (exactly: one
    process, one thread). The online kNN monitor, which reads its images on its first call, must not shift them."""
    config = _config(synthetic_shards, "augment.preset=none", "eval.online_knn=400", "eval.knn_k=20", *overrides)
    step = Pretraining(monitors(evaluation_plan(config, read_manifest(synthetic_shards))))
    whole = InProcess(tmp_path / "whole")
    train(config, step, whole)
    with pytest.raises(Interrupted):
        train(config, step, InProcess(tmp_path / "stopped", stop_after=1))
    _scramble(0)
    resumed = InProcess(tmp_path / "stopped")
    train(config, step, resumed)

    assert [report["start_epoch"] for report in resumed.reports] == [1, 1]  # resumed, not started over
    for name in ("loss", "online_knn_accuracy", "step", "images"):
        assert [r[name] for r in resumed.reports] == [r[name] for r in whole.reports[1:]], name
    ended, expected = (load_checkpoint(InProcess(tmp_path / run).checkpoints()[-1]) for run in ("stopped", "whole"))
    assert ended["step"] == expected["step"] == 3 * STEPS
    for key, value in expected["model"].items():
        torch.testing.assert_close(ended["model"][key], value, rtol=0, atol=0, msg=key)


def test_a_diverging_loss_stops_at_its_read_with_one_line_and_no_checkpoint(synthetic_shards, tmp_path):
    config = _config(synthetic_shards, "optim.lr=1e30", f"train.max_steps_per_epoch={LOSS_READ_EVERY + 5}")
    session = InProcess(tmp_path)
    message = (
        rf"^loss is (nan|inf|-inf) at epoch 0, step {LOSS_READ_EVERY} \(rank 0\); lower optim.lr \(now 1e\+30\) "
        rf"or check the data in {re.escape(str(synthetic_shards))}$"
    )
    with pytest.raises(NonFiniteLoss, match=message):
        train(config, Pretraining(), session)
    assert not session.reports and not list(tmp_path.glob("checkpoint_*"))  # the epoch never reported nor saved


def _whole_then_stopped_and_resumed(folder: str, shards: str) -> tuple[list[float], list[float]]:
    """On this rank of a gloo group: the whole run, then the same run stopped after its first checkpoint and resumed
    in a scrambled random state; the losses of the whole and of the resumed run."""
    rank = dist.get_rank()
    config = _config(shards, "method.name=vae", "method.bottleneck=8", "augment.preset=none")  # noise: global RNG
    whole = InProcess(Path(folder) / "whole")
    train(config, Pretraining(), whole)
    _scramble(rank)
    with contextlib.suppress(Interrupted):
        train(config, Pretraining(), InProcess(Path(folder) / "stopped", stop_after=1))
    dist.barrier()  # rank 0 has kept its checkpoint
    _scramble(rank)
    resumed = InProcess(Path(folder) / "stopped")
    train(config, Pretraining(), resumed)
    return [r["loss"] for r in whole.reports], [r["loss"] for r in resumed.reports]


@pytest.mark.slow  # processes of their own
def test_two_ranks_resumed_continue_every_rank_s_random_streams(synthetic_shards, tmp_path):
    """DDP over a 2-process gloo group, as Ray Train's workers run it: a VAE stopped after its first checkpoint and
    resumed ends with the uninterrupted run's losses and weights, so the checkpoint holds and restores every rank's
    random state (each rank draws its own reparameterisation noise). Handing rank 1 rank 0's saved state fails it."""
    for whole, resumed in gloo_ranks(_whole_then_stopped_and_resumed, str(tmp_path), str(synthetic_shards)):
        assert resumed == whole[1:] and len(whole) == 3  # the epochs after the stop, exactly
    ended, expected = (load_checkpoint(InProcess(tmp_path / run).checkpoints()[-1]) for run in ("stopped", "whole"))
    assert ended["step"] == expected["step"] == 3 * STEPS
    for key, value in expected["model"].items():
        torch.testing.assert_close(ended["model"][key], value, rtol=0, atol=0, msg=key)


def test_no_rank_waits_in_a_collective_while_rank_0_evaluates(synthetic_shards, tmp_path, monkeypatch):
    """Rank 0's evaluations (monitors, fine-tuning's test accuracy) run between an epoch's last collective and the
    report: a collective after them would hold every other rank in it for the evaluation's length, and NCCL fails
    a collective after 30 minutes."""
    import pipeline.train.harness as harness

    events = []
    gather, evaluate, report = harness.gather_objects, Pretraining.evaluate, InProcess.report
    monkeypatch.setattr(harness, "gather_objects", lambda obj: events.append("collective") or gather(obj))
    monkeypatch.setattr(harness, "sum_across_ranks", lambda t: events.append("collective") or t)
    monkeypatch.setattr(Pretraining, "evaluate", lambda *a: events.append("evaluate") or evaluate(*a))
    monkeypatch.setattr(InProcess, "report", lambda *a: events.append("report") or report(*a))
    train(
        _config(synthetic_shards, "train.epochs=2", "train.max_steps_per_epoch=2"), Pretraining(), InProcess(tmp_path)
    )
    assert events.count("evaluate") == events.count("report") == 2
    for start in (i for i, event in enumerate(events) if event == "evaluate"):
        assert events[start + 1] == "report", events
