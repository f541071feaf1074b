"""The driver side of training: configures Ray Train's ``TorchTrainer`` to run the harness with a
:class:`~pipeline.train.harness.Step` (pretraining's, fine-tuning's) and returns the final checkpoint's state. It
knows nothing of tracking: callers hand it Ray Train callbacks (the MLflow epoch logger, Tune's report forwarding).

A rerun with the same run name and ``train.storage_path`` resumes from the last checkpoint, as does Ray after a
worker failure. With ``train.num_workers: 0`` the harness runs in this process instead (no Ray Train workers;
a crash is not retried, a rerun resumes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pipeline import cluster, storage
from pipeline.config.job_config import JobConfig, with_workers
from pipeline.config.validation import check_shared
from pipeline.errors import SslpipeError
from pipeline.stopping import raise_if_stopped
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.harness import train, train_worker
from pipeline.train.pretraining import Pretraining
from pipeline.train.progress import lines_printed
from pipeline.train.session import KEEP_CHECKPOINTS, InProcessSession
from pipeline.train.step import Step


def _user_error(error: Exception) -> SslpipeError | None:
    """The first worker's own error (bad shard, NaN loss, ...) as one line, instead of Ray's wrapper."""
    for rank, failure in sorted(getattr(error, "worker_failures", {}).items()):
        if isinstance(failure, SslpipeError):
            return type(failure)(f"Ray Train worker {rank}: {failure.args[0]}")
    return None


def fit(config: JobConfig, run_name: str, callbacks: Sequence[Any] = (), step: Step | None = None) -> dict:
    """Run (or resume) the harness with ``step`` (default: pretraining the job's method) on
    ``config.train.num_workers`` Ray Train workers (unset: see :func:`~pipeline.config.with_workers`) under run
    name ``run_name`` in ``train.storage_path``; returns the final checkpoint's state (``model``, ``optimizer``,
    ``scheduler``, ``epoch``, ``step``, ``rng``, ``config``, ``spec`` and the last report's ``metrics``).
    ``callbacks`` are Ray Train callbacks, run on its controller after every report. A run that SIGTERM stopped
    raises :class:`~pipeline.errors.RunStopped`."""
    step = step or Pretraining()
    if config.train.num_workers == 0:
        return _fit_in_process(config, run_name, callbacks, step)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = with_workers(config, ray.cluster_resources())
    check_shared(config, cluster.alive_nodes())
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "step": step},
        scaling_config=ScalingConfig(
            num_workers=config.train.num_workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker, **({"GPU": 1} if config.train.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.absolute(config.train.storage_path),  # workers run elsewhere
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            failure_config=FailureConfig(
                max_failures=config.train.max_failures, controller_failure_limit=config.train.start_attempts
            ),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),  # the progress lines and metrics say it for people
        ),
    )
    try:
        result = trainer.fit()
    except Exception as error:  # Ray Train V2 raises TrainingFailedError; a worker's own error is the news
        user_error = _user_error(error)
        if user_error is None:
            raise
        raise user_error from error
    raise_if_stopped()
    with result.checkpoint.as_directory() as directory:
        return load_checkpoint(directory)


def _fit_in_process(config: JobConfig, run_name: str, callbacks: Sequence[Any], step: Step) -> dict:
    """:func:`fit` as this process's only rank (:class:`~pipeline.train.session.InProcessSession`): its progress
    lines printed here, the process's torch threads as they were afterwards."""
    folder = storage.join(config.train.storage_path, run_name)
    session = InProcessSession(folder, config.train.use_gpu, callbacks)
    threads = torch.get_num_threads()
    try:
        with lines_printed(step.progress):
            train(config, step, session)
    finally:
        torch.set_num_threads(threads)
    raise_if_stopped()
    return session.resume_state()
