"""MLflow runs: params, metrics, tags, artifacts, the shard sets as dataset inputs, the run's source, system
metrics, the registered encoder. The store is ``$MLFLOW_TRACKING_URI``, else ``track.tracking_uri``, else
``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils import git_utils
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_DIRTY,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from pipeline import storage
from pipeline.data import Manifest
from pipeline.errors import SslpipeError
from pipeline.track.registration import SHIPPED, pinned_requirements, quiet_registration, shipped_module

RUN_NAME_TAG = "sslpipe.run_name"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
MAX_PARAM_LENGTH = 6000
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"  # the UI's "Machine learning" kind
MAX_DIGEST_LENGTH = 36  # what MLflow stores of a dataset's digest
SYSTEM_METRICS_INTERVAL_S = 5.0  # $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it
SYSTEM_METRICS_FLUSH_S = 30.0
# What MLflow says of its own work in a normal run (creating its database's tables, starting and stopping the system
# metrics monitor) is not the user's news; its warnings and errors still show. So are its artifact download bars.
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "mlflow.system_metrics")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
for _name in QUIET_LOGGERS:
    logging.getLogger(_name).setLevel(logging.WARNING)


def quoted(value: str) -> str:
    """``value`` as a string literal of an MLflow filter: MLflow takes either quote and escapes neither, so the
    one the value does not hold (``validate`` refuses run names holding both)."""
    return f'"{value}"' if "'" in value else f"'{value}'"


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


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's tags for a run's source: the user, ``entry_point`` (``sslpipe pretrain``) as a local source, and
    the commit, branch, remote and dirtiness of the git checkout this package runs from."""
    return resolve_tags({MLFLOW_SOURCE_NAME: entry_point, MLFLOW_SOURCE_TYPE: "LOCAL", **_git_tags(Path(__file__))})


def _git_tags(path: Path) -> dict[str, str]:
    """MLflow's git tags for the checkout holding ``path``; none outside one (an installed package, a Ray job's
    copy of the working directory) or without git."""
    try:
        import git  # GitPython, as MLflow's own git context uses; raises ImportError without a git executable

        repo = git.Repo(path.parent, search_parent_directories=True)
        if repo.ignored(str(path)):
            return {}
        tags = {MLFLOW_GIT_COMMIT: repo.head.commit.hexsha, MLFLOW_GIT_DIRTY: str(repo.is_dirty()).lower()}
        if not repo.head.is_detached:
            tags[MLFLOW_GIT_BRANCH] = repo.active_branch.name
    except Exception:
        return {}
    if url := git_utils.get_git_repo_url(str(path)):
        tags[MLFLOW_GIT_REPO_URL] = url
    return tags


def shard_dataset(location: str, manifest: Manifest) -> Dataset:
    """The shard set at ``location`` (folder or URL) as an MLflow dataset: named after its folder, its source the
    location, its digest the manifest's sha256 (the 36 characters MLflow keeps; the profile has all 64), its
    profile the splits' sizes, image shape, encoding and classes."""
    digest = manifest.digest()
    profile = {
        "manifest_sha256": digest,
        "num_samples": {name: s.num_samples for name, s in manifest.splits.items()},
        "image_shape": list(manifest.image_shape),
        "layout": manifest.layout,
        "encoding": manifest.encoding,
        "classes": len(manifest.class_names),
    }
    return Dataset(
        name=str(location).rstrip("/").rsplit("/", 1)[-1],
        digest=digest[:MAX_DIGEST_LENGTH],
        source_type="local" if storage.is_local(location) else urlparse(str(location)).scheme,
        source=json.dumps({"uri": str(location)}),
        profile=json.dumps(profile),
    )


class Tracker:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)

    def experiment_id(self, experiment: str) -> str:
        """``experiment``'s id, created if needed, marked as model training (MLflow's UI kind ``Machine
        learning``) unless it has a kind already."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return self.client.create_experiment(experiment, tags={KIND_TAG: TRAINING_KIND})
        if KIND_TAG not in found.tags:
            self.client.set_experiment_tag(found.experiment_id, KIND_TAG, TRAINING_KIND)
        return found.experiment_id

    def start(
        self,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        config_yaml: str,
        *,
        parent_run_id: str | None = None,
        reuse_finished: bool = False,
        tags: dict[str, str] | None = None,
        entry_point: str = "sslpipe",
        datasets: Mapping[str, tuple[str, Manifest]] | None = None,
    ) -> str:
        """The run id for ``run_name`` in ``experiment``: an unfinished run of that name (or any, with
        ``reuse_finished``) is resumed, else a new run is created (nested under ``parent_run_id`` if given) with
        ``params``, the job's config as ``config.yaml``, ``entry_point`` and the git checkout as its source, and
        ``datasets`` (context, e.g. ``training`` -> shard location and manifest) as its dataset inputs."""
        experiment_id = self.experiment_id(experiment)
        unfinished = "" if reuse_finished else " and attributes.status != 'FINISHED'"
        previous = self.client.search_runs(
            [experiment_id], f"tags.`{RUN_NAME_TAG}` = {quoted(run_name)}{unfinished}", max_results=1
        )
        if previous:
            run_id = previous[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {**source_tags(entry_point), RUN_NAME_TAG: run_name, **(tags or {})}
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        if datasets:
            self.client.log_inputs(
                run.info.run_id,
                [
                    DatasetInput(shard_dataset(location, manifest), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
                    for context, (location, manifest) in datasets.items()
                ],
            )
        self.log_text(run.info.run_id, config_yaml, "config.yaml")
        return run.info.run_id

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, interval_s: float = SYSTEM_METRICS_INTERVAL_S) -> Iterator[None]:
        """For the block, log this node's ``system/...`` metrics to ``run_id`` every ``interval_s`` seconds: CPU,
        memory, disk, network, and with nvidia-ml-py each GPU's utilisation and memory (MLflow's monitor; a resumed
        run continues its steps). The last samples get :data:`SYSTEM_METRICS_FLUSH_S` to go out after the block: a
        tracking server that went away does not hold the run up."""
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            finishing = threading.Thread(target=monitor.finish, name="sslpipe-system-metrics", daemon=True)
            finishing.start()
            finishing.join(SYSTEM_METRICS_FLUSH_S)

    def find_run(self, experiment: str, run_name: str) -> mlflow.entities.Run | None:
        """The latest run named ``run_name`` in ``experiment``, if any."""
        found = self.client.get_experiment_by_name(experiment)
        runs = (
            self.client.search_runs(
                [found.experiment_id],
                f"tags.`{RUN_NAME_TAG}` = {quoted(run_name)}",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if found
            else []
        )
        return runs[0] if runs else None

    def children(self, experiment: str, parent_run_id: str) -> list[mlflow.entities.Run]:
        """The runs nested under ``parent_run_id`` in ``experiment``."""
        found = self.client.get_experiment_by_name(experiment)
        query = f"tags.`{PARENT_TAG}` = {quoted(parent_run_id)}"
        return self.client.search_runs([found.experiment_id], query) if found else []

    def tags(self, run_id: str) -> dict[str, str]:
        return self.client.get_run(run_id).data.tags

    def run_exists(self, run_id: str) -> bool:
        """Whether this store holds run ``run_id`` (an export's pretraining run may be in another store)."""
        try:
            self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return True

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self.client.log_batch(
            run_id, params=[mlflow.entities.Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        )

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.client.log_batch(
            run_id,
            metrics=[
                mlflow.entities.Metric(k, float(v), int(mlflow.utils.time.get_current_time_millis()), step)
                for k, v in metrics.items()
            ],
        )

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_rows(self, run_id: str, rows: list[dict[str, Any]], name: str) -> None:
        """``rows`` (dicts with the same keys) as the CSV artifact ``name``."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.log_text(run_id, text.getvalue(), name)

    def log_files(self, run_id: str, files: dict[str, bytes], artifact_path: str | None = None) -> None:
        """Log each of ``files`` (name -> content) as an artifact."""
        with _written(files) as paths:
            for path in paths:
                self.log_artifact(run_id, path, artifact_path)

    def log_encoder(
        self, run_id: str, program: bytes, example: torch.Tensor, files: dict[str, bytes], registered_model: str
    ) -> str:
        """Log the encoder whose ``torch.export`` program (dynamic batch; the bytes ``torch.export.save`` wrote)
        is ``program`` as an MLflow PyTorch model with ``files`` (name -> content: safetensors + json) beside it,
        register it, and return its ``models:/name/version`` URI. ``mlflow.pytorch.load_model`` gives a module
        whose ``.eval()`` and ``.to(device)`` work, without our code: the program in :data:`SHIPPED`'s
        ``ExportedEncoder``, which is shipped with the model and imports only torch."""
        loadable = shipped_module().ExportedEncoder(program)
        with fluent_api_at(self.uri), mlflow.start_run(run_id=run_id), _written(files) as paths, quiet_registration():
            info = mlflow.pytorch.log_model(
                # pickled: only the shipped class and the program's bytes (MLflow's pt2 format cannot .eval())
                loadable,
                name="encoder",
                input_example=example.numpy(),
                serialization_format="pickle",
                code_paths=[str(SHIPPED)],
                extra_files=[str(path) for path in paths],
                registered_model_name=registered_model,
                pip_requirements=pinned_requirements(),
            )
        return f"models:/{registered_model}/{info.registered_model_version}"

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


@contextlib.contextmanager
def fluent_api_at(uri: str) -> Iterator[None]:
    """MLflow's module-level API (``mlflow.start_run``, ``mlflow.pytorch.log_model``/``load_model``) at ``uri`` for
    the block. Its setter also exports ``MLFLOW_TRACKING_URI`` to every process started later (a Ray instance's
    workers, a command's subprocesses); afterwards both are as they were."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # (None unsets both)


@contextlib.contextmanager
def _written(files: dict[str, bytes]) -> Iterator[list[Path]]:
    """``files`` (name -> content) as files in a temporary folder, removed after the block."""
    with tempfile.TemporaryDirectory(prefix="sslpipe-files-") as folder:
        paths = [Path(folder, name) for name in files]
        for path, data in zip(paths, files.values(), strict=True):
            path.write_bytes(data)
        yield paths


@contextlib.contextmanager
def downloaded(uri: str) -> Iterator[Path]:
    """A local copy of an MLflow artifact or model URI (``models:/...``, ``runs:/...``) for the block."""
    with tempfile.TemporaryDirectory(prefix="sslpipe-model-") as folder:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))
