"""The driver side of training: configures Ray Train's ``TorchTrainer`` to run a worker function
(:func:`train_worker` for pretraining, :func:`~pipeline.train.finetune.finetune_worker` for fine-tuning) and returns
the final checkpoint's state. It knows nothing of tracking: callers hand it Ray Train callbacks (the MLflow
epoch logger, Tune's report forwarding) and monitors.

A rerun with the same run name and ``train.storage_path`` resumes from the last checkpoint, as does Ray after a
worker failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import JobConfig, with_workers
from pipeline.data import storage
from pipeline.errors import SslpipeError
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.loop import Finisher, Monitor, train_worker


def _user_error(error: Exception) -> SslpipeError | None:
    """The first worker's own error (bad shard, NaN loss, ...) as one line, instead of Ray's wrapper."""
    for rank, failure in sorted(getattr(error, "worker_failures", {}).items()):
        if isinstance(failure, SslpipeError):
            return type(failure)(f"Ray Train worker {rank}: {failure.args[0]}")
    return None


def fit(config: JobConfig, run_name: str, callbacks: Sequence[Any] = (), monitors: Sequence[Monitor] = (),
        finishers: Sequence[Finisher] = ()) -> dict:
    """Run (or resume) ``train_worker`` on ``config.train.num_workers`` Ray Train workers (unset: see
    :func:`~pipeline.config.with_workers`); returns the final
    checkpoint's state (``model``, ``optimizer``, ``scheduler``, ``epoch``, ``step``, ``rng``, ``config``,
    ``spec`` and the last epoch's ``metrics``). ``callbacks`` are Ray Train callbacks, run on its controller after
    every epoch's report; ``monitors`` (picklable) run on rank 0 after every epoch, their metrics reported with the
    epoch's; ``finishers`` (picklable) run on every rank after the last epoch (evaluation's feature pass)."""
    return run_workers(train_worker, config, run_name, {"monitors": list(monitors), "finishers": list(finishers)},
                       callbacks)


def run_workers(worker: Callable[[dict], None], config: JobConfig, run_name: str, payload: dict[str, Any],
                callbacks: Sequence[Any] = ()) -> dict:
    """Run (or resume) Ray Train worker function ``worker`` on ``config.train.num_workers`` workers with
    ``{"config": config dict, **payload}``, under run name ``run_name`` in ``train.storage_path``; returns the state
    in its final checkpoint."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = with_workers(config, ray.cluster_resources())
    trainer = TorchTrainer(
        worker,
        train_loop_config={"config": config.to_dict(), **payload},
        scaling_config=ScalingConfig(
            num_workers=config.train.num_workers, use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker, **({"GPU": 1} if config.train.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name, storage_path=storage.absolute(config.train.storage_path),  # workers run elsewhere
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(
                max_failures=config.train.max_failures, controller_failure_limit=config.train.start_attempts
            ),
            callbacks=list(callbacks),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as error:  # Ray Train V2 raises TrainingFailedError; a worker's own error is the news
        user_error = _user_error(error)
        if user_error is None:
            raise
        raise user_error from error
    with result.checkpoint.as_directory() as directory:
        return load_checkpoint(directory)
