"""Everything MLflow: runs and the registered encoder (``tracker``), the module that encoder loads as
(``sslpipe_encoder``, torch only), and the per-epoch logger that training is handed as a Ray Train callback
(``epoch_log``). No other package imports mlflow."""

from pipeline.track.tracker import Tracker, check_reachable, tracking_uri

__all__ = ["Tracker", "check_reachable", "tracking_uri"]
