"""One tracked run for every command: the tracker, the worker count settled (the run's params record it), the
outbox of epochs the tracking server has not taken yet, and the run's end as FINISHED, FAILED or KILLED."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import cluster, storage
from pipeline.config.job_config import JobConfig, dump_config, with_workers
from pipeline.data import read_manifest
from pipeline.errors import RunStopped
from pipeline.stopping import SIGTERM_RECEIVED, sigterm_as_interrupt
from pipeline.track.epoch_log import EpochMetricsToMlflow, send_unsent
from pipeline.track.tracker import Tracker, check_reachable

DESCRIPTION_TAG = "mlflow.note.content"  # what MLflow's UI shows as the run's description


@dataclass(frozen=True)
class TrackedRun:
    """An MLflow run in progress: ``config`` is its job with the worker count settled; ``manifest_sha256`` the
    training shards' manifest hash (``data.manifest_sha256`` in its params), when it has training shards."""

    tracker: Tracker
    id: str
    name: str
    config: JobConfig
    manifest_sha256: str | None = None

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

    def after_training(self, state: dict) -> None:
        """After training ended with the checkpoint ``state``: send what the outbox still holds (waiting
        ``track.server_wait_s`` for a server that went away), then the precision it trained in, as the param
        ``precision``."""
        send_unsent(self.tracker, self.id, self.outbox, self.config.track.server_wait_s)
        if "precision" in state:  # (not in checkpoints of sslpipe 0.1)
            self.log_params({"precision": state["precision"]})

    def describe(self, text: str) -> None:
        """The run's description in MLflow's UI."""
        self.tracker.set_tags(self.id, {DESCRIPTION_TAG: text})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params known once the run started (a resumed run logs the same values again)."""
        self.tracker.log_params(self.id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.tracker.log_metrics(self.id, dict(metrics), step)

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.tracker.log_artifact(self.id, path)


@contextlib.contextmanager
def tracked_run(
    config: JobConfig,
    name: str,
    *,
    entry_point: str,
    datasets: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    omit: Collection[str] = (),
    parent_run_id: str | None = None,
    trial: bool = False,
    tags: Mapping[str, str] | None = None,
    reuse_finished: bool = False,
    system_metrics: bool = False,
    resume_key: str = "train.name",
) -> Iterator[TrackedRun]:
    """The run named ``name`` (an unfinished one of that name resumed) for the block. Its params: every key of
    ``config`` that applies (less the sections in ``omit``), the training shards' manifest hash and ``params``; its
    inputs: the shards of ``datasets`` (context, e.g. ``training`` -> location; a location recorded once); this
    node's system metrics with ``system_metrics``. The block ending makes it FINISHED; an error FAILED; Ctrl-C or
    SIGTERM KILLED, raising :class:`RunStopped` that says how to resume (a nested run leaves that to its parent).
    A search ``trial`` leaves its status to the search: only the search knows whether Tune stopped it."""
    inputs = {}
    for context, location in (datasets or {}).items():
        if location not in (known for known, _ in inputs.values()):
            inputs[context] = (location, read_manifest(location))
    manifest_sha256 = inputs["training"][1].digest() if "training" in inputs else None
    digest = {"data.manifest_sha256": manifest_sha256} if manifest_sha256 else {}
    uri = check_reachable(config.track.store())  # before Ray starts: an unreachable server fails at once
    if config.train.num_workers != 0:  # Ray Train workers (0: training in this process, no Ray)
        config = with_workers(config, cluster.resources())  # starts or joins Ray
    values = {key: value for key, value in config.flat().items() if key.partition(".")[0] not in omit}
    text = dump_config(config)
    tracker = Tracker(uri)
    run_id = tracker.start(
        config.track.experiment,
        name,
        values | digest | dict(params or {}),
        text,
        parent_run_id=parent_run_id,
        reuse_finished=reuse_finished,
        tags=dict(tags or {}),
        entry_point=entry_point,
        datasets=inputs,
    )
    metrics = tracker.system_metrics(run_id) if system_metrics else contextlib.nullcontext()
    try:
        with sigterm_as_interrupt(), metrics:
            yield TrackedRun(tracker, run_id, name, config, manifest_sha256)
    except BaseException as error:
        if not trial:
            _end(tracker, run_id, error, f"{resume_key}={name}" if parent_run_id is None else None)
        raise
    tracker.finish(run_id)


def _end(tracker: Tracker, run_id: str, error: BaseException, resume: str | None) -> None:
    """A run that ``error`` ended: KILLED when stopped, else FAILED. A stopped run with ``resume`` (``key=name``:
    what a rerun sets) raises :class:`RunStopped` saying how to resume it."""
    stopped = isinstance(error, (RunStopped, KeyboardInterrupt)) or SIGTERM_RECEIVED.is_set()
    tracker.finish(run_id, "KILLED" if stopped else "FAILED")
    if stopped and resume:
        how = "stopped by SIGTERM" if SIGTERM_RECEIVED.is_set() else str(error) or "interrupted"
        raise RunStopped(
            f"run {resume.partition('=')[2]} {how}; rerun the same command with {resume} to resume from "
            "its last checkpoint"
        ) from None
