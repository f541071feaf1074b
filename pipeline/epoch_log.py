"""Per-epoch metrics to MLflow from Ray Train's controller, once the epoch's checkpoint is stored.

Logging from the controller (not from rank 0) ties each logged epoch to a registered checkpoint: when a worker dies
and Ray restarts the group from the last checkpoint, the epochs it reruns were never logged, so the run's step axis
has every epoch exactly once.
"""

from __future__ import annotations

from typing import Any

from ray.train import Checkpoint, UserCallback

from pipeline.track import Tracker


class EpochMetricsToMlflow(UserCallback):
    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._tracker: Tracker | None = None  # made on the controller, after pickling

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        """``metrics[r]`` is rank ``r``'s report; rank 0's epoch metrics are logged at step ``epoch``."""
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri)
        self._tracker.log_metrics(self.run_id, metrics[0], step=int(metrics[0]["epoch"]))
