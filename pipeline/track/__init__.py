"""Everything MLflow: runs and the registered encoder (``tracker``), the one tracked run every command works in
(``run``), what the registered encoder is made of (``registration``; the module it loads as, ``sslpipe_encoder``,
imports only torch), and the per-epoch logger that training is handed as a Ray Train callback (``epoch_log``). No
other package imports mlflow."""

from pipeline.track.tracker import Tracker, check_reachable

__all__ = ["Tracker", "check_reachable"]
