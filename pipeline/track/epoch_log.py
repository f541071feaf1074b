"""Per-epoch metrics to MLflow from Ray Train's controller, once the epoch's checkpoint is stored, surviving a
tracking server that goes away mid-run.

Logging from the controller (not from rank 0) ties each logged epoch to a registered checkpoint: when a worker dies
and Ray restarts the group from the last checkpoint, the epochs it reruns were never logged, so the run's step axis
has every epoch exactly once. A stop that lands between Ray registering an epoch's checkpoint and this logger
sending it leaves that one epoch out: the rerun, which resumes after it, logs it first from the checkpoint. Epochs
that cannot be sent (the server is down) wait, in order, in memory and in a local JSON file (:class:`Outbox`);
training goes on, and they are sent once the server answers again: at the next epoch, or by the driver after
training (:func:`send_unsent`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ray.train import Checkpoint, UserCallback

from pipeline import storage
from pipeline.errors import SslpipeError
from pipeline.track.tracker import Tracker, check_reachable
from pipeline.train.checkpoint import checkpoint_paths, load_checkpoint, run_folder
from pipeline.train.session import WORKER_NODES

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0  # how long a probe of the server may take before an epoch is kept for later
NODES_TAG = "sslpipe.worker_nodes"  # the Ray node of every rank, comma-separated; set again when they change


class Outbox:
    """Epochs ``{"step", "metrics", "tags"}`` not yet in MLflow, mirrored to ``path`` (written atomically) so that
    nothing is lost when the process holding them ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else []

    def add(self, step: int, metrics: dict[str, float], tags: dict[str, str]) -> None:
        self.entries.append({"step": step, "metrics": metrics, "tags": tags})

    def send(self, tracker: Tracker, run_id: str) -> bool:
        """Send the entries in order; ``True`` when all went out (the file is then removed), else the rest are
        saved and ``False``."""
        try:
            check_reachable(tracker.uri, PROBE_TIMEOUT_S)
            while self.entries:
                entry = self.entries[0]
                tracker.log_metrics(run_id, entry["metrics"], step=entry["step"])
                tracker.set_tags(run_id, entry["tags"])
                self.entries.pop(0)
        except Exception as exn:
            with storage.atomic_writer(self.path.parent, self.path.name) as handle:
                handle.write(json.dumps(self.entries).encode())
            log.warning(
                "MLflow at %s unreachable (%s): %d epoch(s) kept in %s, sent when it answers again",
                tracker.uri,
                exn,
                len(self.entries),
                self.path,
            )
            return False
        self.path.unlink(missing_ok=True)
        return True


class EpochMetricsToMlflow(UserCallback):
    """Ray Train callback: logs rank 0's report of each epoch to MLflow run ``run_id`` at step ``epoch``, and the
    ranks' nodes (the checkpoint's metadata) as the tag :data:`NODES_TAG`; what the server cannot take waits in
    the outbox file ``unsent``."""

    def __init__(self, tracking_uri: str, run_id: str, unsent: str) -> None:
        self.tracking_uri, self.run_id, self.unsent = tracking_uri, run_id, unsent
        self._tracker: Tracker | None = None  # made on the controller, after pickling
        self._outbox: Outbox | None = None
        self._nodes: str | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        """``metrics[r]`` is rank ``r``'s report."""
        if self._tracker is None:
            self._tracker, self._outbox = Tracker(self.tracking_uri), Outbox(self.unsent)
            self._add_unlogged_resumed_epoch(int(metrics[0].get("start_epoch", 0)), checkpoint)
        nodes = ",".join(checkpoint.get_metadata().get(WORKER_NODES, [])) if checkpoint else None
        tags = {NODES_TAG: nodes} if nodes and nodes != self._nodes else {}
        self._nodes = nodes or self._nodes
        self._outbox.add(int(metrics[0]["epoch"]), metrics[0], tags)
        self._outbox.send(self._tracker, self.run_id)

    def _add_unlogged_resumed_epoch(self, resumed: int, checkpoint: Checkpoint | None) -> None:
        """On a run's first report here, resumed after ``resumed`` epochs: if the last of those is neither in MLflow
        nor in the outbox, its metrics from the checkpoint written after it (in ``checkpoint``'s run folder) go
        into the outbox, ahead of this report. (Best effort: an unreachable server leaves the run as it is.)"""
        if not resumed or checkpoint is None or any(entry["step"] == resumed - 1 for entry in self._outbox.entries):
            return
        try:
            logged = {m.step for m in self._tracker.client.get_metric_history(self.run_id, "epoch")}
        except Exception:  # the server is away: the run keeps its gap, training goes on
            return
        if resumed - 1 in logged:
            return
        for path in reversed(checkpoint_paths(checkpoint.filesystem, run_folder(checkpoint))):
            with Checkpoint(path, filesystem=checkpoint.filesystem).as_directory() as directory:
                try:
                    state = load_checkpoint(directory)
                except SslpipeError:
                    continue
            if state["epoch"] == resumed:
                log.warning("epoch %d was stored but not logged before the run stopped: logging it now", resumed - 1)
                self._outbox.add(resumed - 1, state["metrics"], {})
                return


def send_unsent(tracker: Tracker, run_id: str, unsent: str | Path, wait_s: float) -> None:
    """Send what the controller could not (``unsent``, if any), retrying for up to ``wait_s`` seconds while the
    server is away; raises naming the file if it stays away."""
    outbox = Outbox(unsent)
    deadline = time.monotonic() + wait_s
    while outbox.entries and not outbox.send(tracker, run_id):
        if time.monotonic() > deadline:
            raise SslpipeError(
                f"MLflow at {tracker.uri} still unreachable after {wait_s:.0f} s: the metrics of "
                f"{len(outbox.entries)} epoch(s) are kept in {outbox.path}; the checkpoint is kept too, so rerunning "
                "the same command once the server is back sends them, then evaluates and exports"
            )
        time.sleep(min(10.0, wait_s / 10 + 0.1))
