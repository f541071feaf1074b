"""What a pretraining job's config means to the parts of the library that read no config: its paths (absolute:
Ray workers and Tune trials run in other folders), its evaluation plan and where the ranks write its features, the
description of its MLflow run, and the preview of its views."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from augment import preview_batch
from pipeline import storage
from pipeline.config.job_config import JobConfig
from pipeline.data import LabeledShards, Manifest, ShardLoader, read_manifest
from pipeline.evaluate.evaluation_plan import AnomalyPlan, EvaluationPlan
from pipeline.evaluate.pixels import pixel_plan
from pipeline.methods import METHODS

EVALUATION_FOLDER = "evaluation"  # in the run's folder beside its checkpoints: the ranks' features, then gone


def resolve_paths(config: JobConfig, run_name: str) -> JobConfig:
    """``config`` with its local paths absolute and its run name filled in."""
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, shards=storage.absolute(config.data.shards)),
        eval=dataclasses.replace(config.eval, shards=config.eval.shards and storage.absolute(config.eval.shards)),
        train=dataclasses.replace(
            config.train, name=run_name, storage_path=storage.absolute(config.train.storage_path)
        ),
        export=dataclasses.replace(config.export, out_dir=storage.absolute(config.export.out_dir)),
    )


def evaluation_plan(config: JobConfig, manifest: Manifest) -> EvaluationPlan:
    """The evaluation of ``config``'s run (its paths resolved), whose training shards ``manifest`` describes."""
    data, evaluation = config.data, config.eval
    labeled = read_manifest(evaluation.shards) if evaluation.shards else manifest
    shards = LabeledShards(
        config.evaluation_shards,
        evaluation.batch_size,
        data.crop_size,
        data.url_template,
        data.skip_bad_samples,
        data.num_workers,
    )
    excluded = data.exclude_classes(len(labeled.class_names))
    protocol = (
        f"class {data.normal_class} normal"
        if data.normal_class is not None
        else (f"class {data.holdout_class} held out")
    )
    anomaly = AnomalyPlan(excluded, protocol, evaluation.anomaly_knn_k, evaluation.anomaly_pca_k) if excluded else None
    return EvaluationPlan(
        shards,
        tuple(labeled.class_names),
        config.method.name,
        METHODS[config.method.name].capabilities,
        config.train.seed,
        evaluation.probe_max_iter,
        evaluation.knn_k,
        evaluation.knn_temperature,
        evaluation.baselines,
        pixel_plan(labeled, evaluation.pixels_max_gb, data.crop_size),
        anomaly,
        evaluation.online_knn,
        config.train.amp,
    )


def features_folder(config: JobConfig) -> str:
    """Where the Ray Train ranks write their features: ``evaluation/`` in the run's folder (its name resolved)."""
    return storage.join(storage.join(config.train.storage_path, config.train.name), EVALUATION_FOLDER)


def description(config: JobConfig, metrics: dict[str, float]) -> str:
    """The run's description: method, encoder, data and the headline result."""
    model = config.model
    encoder = (
        f"{model.encoder} (width {model.width}, {model.embed_dim}-d)" if model.kind == "small_cnn" else (model.encoder)
    )
    result = f"probe {metrics['probe_accuracy']:.4f}, kNN {metrics['knn_accuracy']:.4f}"
    baselines = [
        f"{name} {metrics[key]:.4f}"
        for name, key in (
            ("random encoder", "baseline_random_encoder_probe_accuracy"),
            ("pixels", "baseline_pixels_probe_accuracy"),
        )
        if key in metrics
    ]
    if baselines:
        result += f" (probes of the baselines: {', '.join(baselines)})"
    epochs = f"{config.train.epochs} epoch{'s' if config.train.epochs != 1 else ''}"
    return f"{config.method.name} on a {encoder} encoder, {epochs} of {config.data.shards}: {result}"


def preview(config: JobConfig, manifest: Manifest, path: Path) -> Path:
    """Grid of 8 training images above their augmented views."""
    loader = ShardLoader(
        config.data.shards,
        "train",
        8,
        rank=0,
        world_size=1,
        num_workers=0,
        mode=config.data.mode,
        url_template=config.data.url_template,
        manifest=manifest,
        exclude_classes=config.data.exclude_classes(len(manifest.class_names)),
        skip_bad_samples=config.data.skip_bad_samples,
        views=config.data.training_views(2, config.augment.crop_scale),
    )
    return preview_batch(
        loader,
        config.augment.preset,
        2,
        config.data.crop_size,
        config.train.seed,
        path,
        **config.augment.view_options(),
    )
