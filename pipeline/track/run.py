"""One tracked run for every command: the tracker, the worker count settled (the run's params record it), the
outbox of epochs the tracking server has not taken yet, and the run's end as FINISHED, FAILED or KILLED."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import cluster, storage
from pipeline.config import JobConfig, dump_config, with_workers
from pipeline.data import Manifest
from pipeline.errors import RunStopped
from pipeline.stopping import SIGTERM_RECEIVED, sigterm_as_interrupt
from pipeline.track.epoch_log import EpochMetricsToMlflow, send_unsent
from pipeline.track.tracker import Tracker, check_reachable

DESCRIPTION_TAG = "mlflow.note.content"  # what MLflow's UI shows as the run's description


@dataclass(frozen=True)
class TrackedRun:
    """An MLflow run in progress: ``config`` is its job with the worker count settled."""

    tracker: Tracker
    id: str
    name: str
    config: JobConfig

    @property
    def outbox(self) -> Path:
        """Where epochs the tracking server could not take wait: the run's folder beside its checkpoints, or the
        temp folder when checkpoints go to a URL."""
        train = self.config.train
        if storage.is_local(train.storage_path):
            return storage.local_path(train.storage_path) / self.name / "mlflow_unsent.json"
        return Path(tempfile.gettempdir()) / "sslpipe-unsent" / f"{self.id}.json"

    def epoch_logger(self) -> EpochMetricsToMlflow:
        """The Ray Train callback that logs every epoch to this run, through the outbox."""
        return EpochMetricsToMlflow(self.tracker.uri, self.id, str(self.outbox))

    def send_unsent(self) -> None:
        """Send what the outbox still holds, waiting ``track.server_wait_s`` for a server that went away."""
        send_unsent(self.tracker, self.id, self.outbox, self.config.track.server_wait_s)

    def describe(self, text: str) -> None:
        """The run's description in MLflow's UI."""
        self.tracker.set_tags(self.id, {DESCRIPTION_TAG: text})


@contextlib.contextmanager
def tracked_run(
    config: JobConfig, name: str, *, entry_point: str, params: Mapping[str, Any] | None = None,
    omit: Collection[str] = (), datasets: Mapping[str, tuple[str, Manifest]] | None = None,
    parent_run_id: str | None = None, trial: bool = False, tags: Mapping[str, str] | None = None,
    reuse_finished: bool = False, system_metrics: bool = False, resume_key: str = "train.name",
) -> Iterator[TrackedRun]:
    """The run named ``name`` (an unfinished one of that name resumed) for the block, with every key of
    ``config`` that applies (less the sections in ``omit``) and ``params`` as its params, ``datasets`` (context ->
    shard location and manifest) as its inputs, and this node's system metrics with ``system_metrics``. The block
    ending makes it FINISHED; an error FAILED; Ctrl-C or SIGTERM KILLED, raising :class:`RunStopped` that says how
    to resume (a nested run leaves that to its parent). A search ``trial`` leaves its status to the search: only
    the search knows whether Tune stopped it."""
    tracker = Tracker(check_reachable(config.track.store()))
    config = with_workers(config, cluster.resources())  # starts or joins Ray
    values = {key: value for key, value in config.flat().items() if key.partition(".")[0] not in omit}
    run_id = tracker.start(config.track.experiment, name, values | dict(params or {}), dump_config(config),
                           parent_run_id=parent_run_id, reuse_finished=reuse_finished, tags=dict(tags or {}),
                           entry_point=entry_point, datasets=datasets)
    metrics = tracker.system_metrics(run_id) if system_metrics else contextlib.nullcontext()
    try:
        with sigterm_as_interrupt(), metrics:
            yield TrackedRun(tracker, run_id, name, config)
    except BaseException as error:
        if trial:
            raise
        stopped = isinstance(error, (RunStopped, KeyboardInterrupt)) or SIGTERM_RECEIVED.is_set()
        tracker.finish(run_id, "KILLED" if stopped else "FAILED")
        if not stopped or parent_run_id is not None:
            raise
        how = "stopped by SIGTERM" if SIGTERM_RECEIVED.is_set() else str(error) or "interrupted"
        raise RunStopped(f"run {name} {how}; rerun the same command with {resume_key}={name} to resume from its "
                         "last checkpoint") from None
    tracker.finish(run_id)
