"""Everything MLflow: runs, params, per-epoch metrics, artifacts, the registered encoder. No other module imports
mlflow. The store is ``$MLFLOW_TRACKING_URI``, else ``track.tracking_uri``, else ``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import JobConfig, TrackConfig, dump_config
from pipeline.errors import SslpipeError

RUN_NAME_TAG = "sslpipe.run_name"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
MAX_PARAM_LENGTH = 6000


def tracking_uri(config: TrackConfig) -> str:
    """The store to use, made absolute so Ray workers (whose cwd differs) write to the same place."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).absolute())
    elif "://" not in uri:
        uri = str(Path(uri).absolute())
    return uri


def check_reachable(uri: str, timeout_s: float = 10.0) -> str:
    """``uri``, after checking that a tracking server (``http(s)://``) answers: fail before any training, not
    after MLflow's retries mid-run. Any HTTP answer counts (a server behind authentication answers 401)."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            pass
        except OSError as exn:
            raise SslpipeError(
                f"MLflow tracking server {uri} does not answer ({getattr(exn, 'reason', exn)}); start it, or point "
                "MLFLOW_TRACKING_URI (or track.tracking_uri) at one that runs"
            ) from None
    return uri


class Tracker:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)

    def start(self, config: JobConfig, run_name: str, manifest_digest: str, *, parent_run_id: str | None = None,
              reuse_finished: bool = False, tags: dict[str, str] | None = None) -> str:
        """The run id for ``run_name``: an unfinished run of that name (or any, with ``reuse_finished``) is
        resumed, else a new run is created (nested under ``parent_run_id`` if given) with the resolved config
        (every key as a param), the manifest hash and the config as YAML."""
        experiment = self.client.get_experiment_by_name(config.track.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(config.track.experiment)
        unfinished = "" if reuse_finished else " and attributes.status != 'FINISHED'"
        previous = self.client.search_runs([experiment_id], f"tags.`{RUN_NAME_TAG}` = '{run_name}'{unfinished}",
                                           max_results=1)
        if previous:
            run_id = previous[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {RUN_NAME_TAG: run_name, **(tags or {})}
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        params = {key: str(value)[:MAX_PARAM_LENGTH] for key, value in config.flat().items()}
        params["data.manifest_sha256"] = manifest_digest
        self.client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
        self.log_text(run.info.run_id, dump_config(config), "config.yaml")
        return run.info.run_id

    def find_run(self, experiment: str, run_name: str) -> mlflow.entities.Run | None:
        """The latest run named ``run_name`` in ``experiment``, if any."""
        found = self.client.get_experiment_by_name(experiment)
        runs = self.client.search_runs([found.experiment_id], f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                                       order_by=["attributes.start_time DESC"], max_results=1) if found else []
        return runs[0] if runs else None

    def children(self, experiment: str, parent_run_id: str) -> list[mlflow.entities.Run]:
        """The runs nested under ``parent_run_id`` in ``experiment``."""
        found = self.client.get_experiment_by_name(experiment)
        return self.client.search_runs([found.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'") if found else []

    def tags(self, run_id: str) -> dict[str, str]:
        return self.client.get_run(run_id).data.tags

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.client.log_batch(run_id, metrics=[
            mlflow.entities.Metric(k, float(v), int(mlflow.utils.time.get_current_time_millis()), step)
            for k, v in metrics.items()
        ])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_encoder(self, run_id: str, encoder: torch.nn.Module, example: torch.Tensor, files: list[Path],
                    registered_model: str) -> str:
        """Log ``encoder`` as an MLflow PyTorch model (pt2, loadable without our code) with ``files``
        (safetensors + json) beside it, register it, and return its ``models:/name/version`` URI."""
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                encoder.eval(), name="encoder", input_example=example.numpy(), serialization_format="pt2",
                extra_files=[str(f) for f in files], registered_model_name=registered_model,
                # a pt2 program needs torch only: MLflow's own pins, instead of inferring them (6 s a model here)
                pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            )
        return f"models:/{registered_model}/{info.registered_model_version}"

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def download(uri: str) -> Path:
    """A local copy of an MLflow artifact or model URI (``models:/...``, ``runs:/...``)."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="sslpipe-")))
