"""Everything MLflow: runs, params, per-epoch metrics, artifacts, the registered encoder. No other module imports
mlflow. The store is ``$MLFLOW_TRACKING_URI``, else ``track.tracking_uri``, else ``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import JobConfig, TrackConfig, dump_config

RUN_NAME_TAG = "sslpipe.run_name"
MAX_PARAM_LENGTH = 6000


def tracking_uri(config: TrackConfig) -> str:
    """The store to use, made absolute so Ray workers (whose cwd differs) write to the same place."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).absolute())
    elif "://" not in uri:
        uri = str(Path(uri).absolute())
    return uri


class Tracker:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)

    def start(self, config: JobConfig, run_name: str, manifest_digest: str) -> str:
        """The run id for ``run_name``: an unfinished run of that name is resumed, else a new run is created
        with the resolved config (every key as a param), the manifest hash and the config as YAML."""
        experiment = self.client.get_experiment_by_name(config.track.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(config.track.experiment)
        previous = self.client.search_runs(
            [experiment_id], f"tags.`{RUN_NAME_TAG}` = '{run_name}' and attributes.status != 'FINISHED'", max_results=1
        )
        if previous:
            run_id = previous[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name})
        params = {key: str(value)[:MAX_PARAM_LENGTH] for key, value in config.flat().items()}
        params["data.manifest_sha256"] = manifest_digest
        self.client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
        self.log_text(run.info.run_id, dump_config(config), "config.yaml")
        return run.info.run_id

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
            )
        return f"models:/{registered_model}/{info.registered_model_version}"

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def download(uri: str) -> Path:
    """A local copy of an MLflow artifact or model URI (``models:/...``, ``runs:/...``)."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="sslpipe-")))
