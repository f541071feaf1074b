"""Everything MLflow: runs and the registered encoder (``tracker``), the one tracked run every command works in
(``run``), the module the registered encoder loads as (``sslpipe_encoder``, torch only), and the per-epoch logger
that training is handed as a Ray Train callback (``epoch_log``). No other package imports mlflow."""

from pipeline.track.tracker import Tracker, check_reachable

__all__ = ["Tracker", "check_reachable"]
