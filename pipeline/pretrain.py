"""``sslpipe pretrain``: shards -> Ray Train pretraining -> linear probe and kNN -> MLflow -> exported encoder."""

from __future__ import annotations

import dataclasses
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augment import preview_batch
from pipeline import cluster
from pipeline.config import JobConfig, dump_config, validate, with_workers
from pipeline.data import Manifest, ShardLoader, read_manifest, storage
from pipeline.errors import SslpipeError
from pipeline.evaluate.online import OnlineKnn
from pipeline.evaluate.suite import (baseline_params, evaluate_method, features_folder, gather_features,
                                     worker_features)
from pipeline.export import BACKBONE, META, ONNX, PT2, WEIGHTS, example_input, export_encoder, exported_files
from pipeline.methods import trained_method
from pipeline.track import Tracker, check_reachable, tracking_uri
from pipeline.track.epoch_log import EpochMetricsToMlflow, send_unsent
from pipeline.train import fit


class RunStopped(SslpipeError):
    """The driver was stopped (SIGTERM, Ctrl-C) mid-run; the same command resumes it."""


SIGTERM_RECEIVED = threading.Event()


def stop_on_sigterm() -> Any:
    """In the main thread, make SIGTERM (a scheduler's or ``kill``'s stop) do what Ctrl-C does: Ray Train's own
    SIGINT handler aborts the run gracefully (elsewhere SIGINT raises ``KeyboardInterrupt``); ``pretrain`` then sees
    ``SIGTERM_RECEIVED`` and records the run as stopped instead of letting it vanish. Returns the handler it
    replaced (``None`` in other threads, such as a Tune trial's, where signals are not ours to take)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    SIGTERM_RECEIVED.clear()

    def stop(signum: int, frame: object) -> None:
        SIGTERM_RECEIVED.set()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)

    return signal.signal(signal.SIGTERM, stop)


@dataclass
class PretrainSummary:
    run_id: str
    run_name: str
    tracking_uri: str
    model_uri: str | None  # None when not registered (search trials: only the best is)
    export_dir: str  # folder or URL
    metrics: dict[str, float]  # the final evaluation
    train_metrics: dict[str, float | str]  # the last epoch's
    experiment_id: str


def resolve_paths(config: JobConfig, run_name: str) -> JobConfig:
    """Absolute local paths (Ray workers run in another cwd) and the run name filled in."""
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, shards=storage.absolute(config.data.shards)),
        eval=dataclasses.replace(config.eval, shards=config.eval.shards and storage.absolute(config.eval.shards)),
        train=dataclasses.replace(config.train, name=run_name,
                                  storage_path=storage.absolute(config.train.storage_path)),
        export=dataclasses.replace(config.export, out_dir=storage.absolute(config.export.out_dir)),
    )


def unsent_path(config: JobConfig, run_id: str) -> Path:
    """Where epochs that the tracking server could not take wait: the run's folder beside its checkpoints, or
    the temp folder when checkpoints go to a URL."""
    if storage.is_local(config.train.storage_path):
        return storage.local_path(config.train.storage_path) / config.train.name / "mlflow_unsent.json"
    return Path(tempfile.gettempdir()) / "sslpipe-unsent" / f"{run_id}.json"


def preview(config: JobConfig, manifest: Manifest, path: Path) -> Path:
    """Grid of 8 training images above their augmented views."""
    loader = ShardLoader(config.data.shards, "train", 8, rank=0, world_size=1, num_workers=0,
                         mode=config.data.mode, url_template=config.data.url_template, manifest=manifest,
                         exclude_classes=config.data.exclude_classes(len(manifest.class_names)),
                         skip_bad_samples=config.data.skip_bad_samples,
                         views=config.data.training_views(2, config.augment.crop_scale))
    return preview_batch(loader, config.augment.preset, 2, config.data.crop_size, config.train.seed, path,
                         **config.augment.view_options())


def run_params(config: JobConfig, manifest: Manifest) -> dict[str, Any]:
    """What an MLflow run records as params: every key that applies to the job, and the data set's hash."""
    return {**config.flat(), "data.manifest_sha256": manifest.digest(), **baseline_params(config, manifest)}


def run_datasets(config: JobConfig, manifest: Manifest) -> dict[str, tuple[str, Manifest]]:
    """The shard sets a run reads, by MLflow dataset context: ``training``, and ``evaluation`` when it differs."""
    datasets = {"training": (config.data.shards, manifest)}
    if config.evaluation_shards != config.data.shards:
        datasets["evaluation"] = (config.evaluation_shards, read_manifest(config.evaluation_shards))
    return datasets


def monitors(config: JobConfig) -> list[OnlineKnn]:
    """What rank 0 measures after every epoch: the online kNN when ``eval.online_knn`` asks for it."""
    if config.eval.online_knn <= 0:
        return []
    return [OnlineKnn(config.evaluation_shards, config.eval.online_knn, config.eval.knn_k, config.eval.knn_temperature,
                      config.data.url_template, config.data.skip_bad_samples, config.data.crop_size)]


def pretrain(
    config: JobConfig, *, parent_run_id: str | None = None, train_callbacks: Sequence[Any] = (), register: bool = True
) -> PretrainSummary:
    """The whole job for ``config``; a search trial passes its parent MLflow run, Tune's report callback, and
    ``register=False`` (the search registers its best trial's encoder). A nested run that does not finish keeps
    RUNNING for its search to end: only the search knows whether Tune stopped the trial, whose process meets
    arbitrary errors while Tune tears it down."""
    run_name = config.train.name or f"{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = resolve_paths(config, run_name)
    manifest = read_manifest(config.data.shards)
    validate(config, manifest)
    tracker = Tracker(check_reachable(tracking_uri(config.track)))
    config = with_workers(config, cluster.resources())  # starts or joins Ray; the run's params record how many
    run_id = tracker.start(config.track.experiment, run_name, run_params(config, manifest), dump_config(config),
                           parent_run_id=parent_run_id, datasets=run_datasets(config, manifest),
                           entry_point="sslpipe tune" if parent_run_id else "sslpipe pretrain")
    previous_handler = None
    try:
        with tempfile.TemporaryDirectory(prefix="sslpipe-run-") as folder, tracker.system_metrics(run_id):
            work = Path(folder)
            tracker.log_artifact(run_id, preview(config, manifest, work / "augmentation_preview.png"))
            previous_handler = stop_on_sigterm()  # after Ray's driver has installed its own handler
            unsent = unsent_path(config, run_id)
            epoch_log = EpochMetricsToMlflow(tracker.uri, run_id, str(unsent))
            extraction = worker_features(config, manifest, features_folder(config))  # on the workers, after training
            extraction.clear()
            state = fit(config, run_name, [epoch_log, *train_callbacks], monitors(config), [extraction])
            if SIGTERM_RECEIVED.is_set():  # Ray Train aborted the run; its last checkpoint is where a rerun resumes
                raise RunStopped("stopped by SIGTERM")
            send_unsent(tracker, run_id, unsent, config.track.server_wait_s)
            method = trained_method(config.method, config.model, manifest, state, config.data.crop_size)
            metrics, plots = evaluate_method(method, config, manifest, work, gather_features(extraction))
            tracker.log_metrics(run_id, metrics, step=config.train.epochs)
            for plot in plots:
                tracker.log_artifact(run_id, plot)
        export_dir = storage.join(config.export.out_dir, run_name)
        metadata = {"method": config.method.name, "config": config.to_dict(), "manifest_sha256": manifest.digest(),
                    "mlflow_run_id": run_id, "metrics": metrics}
        encoder, spec = method.encoder, method.spec  # the method's final encoder (e.g. ending at a bottleneck)
        written = export_encoder(encoder, spec, export_dir, metadata, onnx=config.export.onnx)
        artifacts = tuple(name for kind, name in (("pt2", PT2), ("backbone", BACKBONE), ("onnx", ONNX)) if kind in written)
        tracker.log_files(run_id, exported_files(export_dir, artifacts), "export")  # the model holds the other two
        model_uri = None
        if register:
            files = exported_files(export_dir, (PT2, WEIGHTS, META))
            model_uri = tracker.log_encoder(run_id, files.pop(PT2), example_input(spec), files,
                                            config.track.registered_model)
    except BaseException as error:
        if parent_run_id is not None:
            raise
        if not (isinstance(error, (RunStopped, KeyboardInterrupt)) or SIGTERM_RECEIVED.is_set()):
            tracker.finish(run_id, "FAILED")
            raise
        tracker.finish(run_id, "KILLED")
        how = "stopped by SIGTERM" if SIGTERM_RECEIVED.is_set() else "interrupted"
        raise RunStopped(f"run {run_name} {how}; rerun the same command with train.name={run_name} to resume "
                         "from its last checkpoint") from None
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    tracker.finish(run_id)
    return PretrainSummary(run_id, run_name, tracker.uri, model_uri, export_dir, metrics, state.get("metrics", {}),
                           tracker.experiment_id(config.track.experiment))
