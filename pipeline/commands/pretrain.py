"""``sslpipe pretrain``: shards -> Ray Train pretraining -> linear probe and kNN -> MLflow -> exported encoder."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.config.job_config import JobConfig
from pipeline.config.validation import validate
from pipeline.data import read_manifest
from pipeline.evaluate.suite import evaluate_method, gathered_features, monitors, worker_features
from pipeline.export import BACKBONE, ONNX, PT2, export_encoder, exported_files, model_parts
from pipeline.job import description, evaluation_plan, features_folder, preview, resolve_paths
from pipeline.methods import Method, trained_method
from pipeline.track.run import TrackedRun, tracked_run
from pipeline.train import fit
from pipeline.train.pretraining import Pretraining


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


def pretrain(
    config: JobConfig, *, parent_run_id: str | None = None, train_callbacks: Sequence[Any] = (), register: bool = True
) -> PretrainSummary:
    """The whole job for ``config``: validate -> tracked run -> fit -> evaluate -> export. A search trial passes
    its parent MLflow run, Tune's report callback, and ``register=False`` (the search registers its best trial's
    encoder); its run's status is the search's to set."""
    name = config.train.name or f"{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = resolve_paths(config, name)
    manifest = read_manifest(config.data.shards)
    validate(config, manifest)
    with (
        tracked_run(
            config,
            name,
            entry_point="sslpipe tune" if parent_run_id else "sslpipe pretrain",
            datasets={"training": config.data.shards, "evaluation": config.evaluation_shards},
            parent_run_id=parent_run_id,
            trial=parent_run_id is not None,
            system_metrics=True,
        ) as run,
        tempfile.TemporaryDirectory(prefix="sslpipe-run-") as folder,
    ):
        job, work = run.config, Path(folder)  # the job as the run records it: its worker count settled
        plan = evaluation_plan(job, manifest)
        run.log_params(plan.params())
        run.log_artifacts([preview(job, manifest, work / "augmentation_preview.png")])
        extraction = worker_features(plan, features_folder(job))
        extraction.clear()  # what an earlier attempt left
        step = Pretraining(monitors(plan), (extraction,), progress=parent_run_id is None)  # a trial's: the search's
        state = fit(job, name, [run.epoch_logger(), *train_callbacks], step)
        run.after_training(state)
        method = trained_method(job.method, job.model, manifest, state, job.data.crop_size)
        with gathered_features(extraction, work) as features:
            metrics, plots = evaluate_method(method, plan, work, features)
        run.log_metrics(metrics, step=job.train.epochs)
        run.log_artifacts(plots)
        export_dir = export_run(run, method, metrics)
        model_uri = None
        if register:
            model_uri = run.tracker.log_encoder(run.id, *model_parts(export_dir), job.track.registered_model)
        run.describe(description(job, metrics))
    return PretrainSummary(
        run.id,
        name,
        run.tracker.uri,
        model_uri,
        export_dir,
        metrics,
        state.get("metrics", {}),
        run.tracker.experiment_id(job.track.experiment),
    )


def export_run(run: TrackedRun, method: Method, metrics: dict[str, float]) -> str:
    """The method's final encoder (e.g. ending at a bottleneck) exported to ``export.out_dir/<run name>``, its
    pt2, backbone and ONNX files logged to the run (the registered model holds the others); returns the folder."""
    config = run.config
    export_dir = storage.join(config.export.out_dir, run.name)
    metadata = {
        "method": config.method.name,
        "config": config.to_dict(),
        "manifest_sha256": run.manifest_sha256,
        "mlflow_run_id": run.id,
        "metrics": metrics,
    }
    written = export_encoder(method.encoder, method.spec, export_dir, metadata, onnx=config.export.onnx)
    artifacts = tuple(name for kind, name in (("pt2", PT2), ("backbone", BACKBONE), ("onnx", ONNX)) if kind in written)
    run.tracker.log_files(run.id, exported_files(export_dir, artifacts), "export")
    return export_dir


def show(summary: PretrainSummary) -> None:
    """The result block a user reads at the end of a run."""
    for name, value in summary.metrics.items():
        print(f"{name:<40} {value:.4f}")
    print(f"MLflow run      {summary.run_id} ({summary.run_name}) in {summary.tracking_uri}")
    print(f"encoder model   {summary.model_uri}")
    print(f"encoder files   {summary.export_dir}")
    print(
        f"browse results  mlflow ui --backend-store-uri {summary.tracking_uri}, then open "
        f"http://127.0.0.1:5000/#/experiments/{summary.experiment_id}?workflowType=machine_learning"
    )
