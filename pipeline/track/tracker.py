"""MLflow runs: params, metrics, tags, artifacts, the registered encoder. The store is ``$MLFLOW_TRACKING_URI``,
else ``track.tracking_uri``, else ``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import TrackConfig
from pipeline.errors import SslpipeError

RUN_NAME_TAG = "sslpipe.run_name"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
MAX_PARAM_LENGTH = 6000


def quoted(value: str) -> str:
    """``value`` as a string literal of an MLflow filter: MLflow takes either quote and escapes neither, so the
    one the value does not hold (``validate`` refuses run names holding both)."""
    return f'"{value}"' if "'" in value else f"'{value}'"


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

    def start(self, experiment: str, run_name: str, params: dict[str, Any], config_yaml: str, *,
              parent_run_id: str | None = None, reuse_finished: bool = False, tags: dict[str, str] | None = None
              ) -> str:
        """The run id for ``run_name`` in ``experiment``: an unfinished run of that name (or any, with
        ``reuse_finished``) is resumed, else a new run is created (nested under ``parent_run_id`` if given) with
        ``params`` and the job's config as ``config.yaml``."""
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        unfinished = "" if reuse_finished else " and attributes.status != 'FINISHED'"
        previous = self.client.search_runs([experiment_id], f"tags.`{RUN_NAME_TAG}` = {quoted(run_name)}{unfinished}",
                                           max_results=1)
        if previous:
            run_id = previous[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {RUN_NAME_TAG: run_name, **(tags or {})}
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.client.log_batch(run.info.run_id, params=[mlflow.entities.Param(key, str(value)[:MAX_PARAM_LENGTH])
                                                       for key, value in params.items()])
        self.log_text(run.info.run_id, config_yaml, "config.yaml")
        return run.info.run_id

    def find_run(self, experiment: str, run_name: str) -> mlflow.entities.Run | None:
        """The latest run named ``run_name`` in ``experiment``, if any."""
        found = self.client.get_experiment_by_name(experiment)
        runs = self.client.search_runs([found.experiment_id], f"tags.`{RUN_NAME_TAG}` = {quoted(run_name)}",
                                       order_by=["attributes.start_time DESC"], max_results=1) if found else []
        return runs[0] if runs else None

    def children(self, experiment: str, parent_run_id: str) -> list[mlflow.entities.Run]:
        """The runs nested under ``parent_run_id`` in ``experiment``."""
        found = self.client.get_experiment_by_name(experiment)
        query = f"tags.`{PARENT_TAG}` = {quoted(parent_run_id)}"
        return self.client.search_runs([found.experiment_id], query) if found else []

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

    def log_files(self, run_id: str, files: dict[str, bytes], artifact_path: str | None = None) -> None:
        """Log each of ``files`` (name -> content) as an artifact."""
        with _written(files) as paths:
            for path in paths:
                self.log_artifact(run_id, path, artifact_path)

    def log_encoder(self, run_id: str, encoder: torch.nn.Module, example: torch.Tensor, files: dict[str, bytes],
                    registered_model: str) -> str:
        """Log ``encoder`` as an MLflow PyTorch model (pt2, loadable without our code) with ``files``
        (name -> content: safetensors + json) beside it, register it, and return its ``models:/name/version``
        URI."""
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id), _written(files) as paths:
            info = mlflow.pytorch.log_model(
                encoder.eval(), name="encoder", input_example=example.numpy(), serialization_format="pt2",
                extra_files=[str(path) for path in paths], registered_model_name=registered_model,
                # a pt2 program needs torch only: MLflow's own pins, instead of inferring them (6 s a model here)
                pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            )
        return f"models:/{registered_model}/{info.registered_model_version}"

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


@contextlib.contextmanager
def _written(files: dict[str, bytes]) -> Iterator[list[Path]]:
    """``files`` (name -> content) as files in a temporary folder, removed after the block."""
    with tempfile.TemporaryDirectory(prefix="sslpipe-files-") as folder:
        paths = [Path(folder, name) for name in files]
        for path, data in zip(paths, files.values()):
            path.write_bytes(data)
        yield paths


@contextlib.contextmanager
def downloaded(uri: str) -> Iterator[Path]:
    """A local copy of an MLflow artifact or model URI (``models:/...``, ``runs:/...``) for the block."""
    with tempfile.TemporaryDirectory(prefix="sslpipe-model-") as folder:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))
