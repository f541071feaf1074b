"""The one check of a job before any work starts: :func:`validate` checks everything that can be checked without
reading data (and, given the shards' manifest, what depends on their images, classes and sizes); a failure is one
:class:`~pipeline.errors.ConfigError` naming the key or file."""

from __future__ import annotations

import dataclasses
import importlib.util

from augment.presets import PRESETS, check_strengths
from pipeline import options, storage
from pipeline.config.job_config import CPU_WORKERS, JobConfig
from pipeline.data import ShardLoader, read_manifest
from pipeline.data.manifest import Manifest
from pipeline.errors import ConfigError
from pipeline.methods import METHODS, Method
from pipeline.methods.capabilities import Capability
from pipeline.models import check_encoder, encoder_spec
from pipeline.models.decoders import check_decodable


def validate(config: JobConfig, manifest: Manifest | None = None) -> JobConfig:
    """``config`` once everything that can be checked without reading data holds; with the shards' ``manifest``,
    also what depends on their images, classes and shard sizes. ``pretrain``, ``tune`` and ``sslpipe validate``
    call this before Ray starts; a failure is one :class:`ConfigError` naming the key or file. The checks go from
    the job's own combinations to each part's rules (augmentation, encoder, every field: a config may have been
    changed in Python) and down to the data."""
    method = _method(config)
    _check_combinations(config, method)
    if manifest is not None:
        _check_images(config, manifest)
    check_strengths(config.augment.preset, config.augment.jitter_strength)
    check_encoder(config.model)
    if manifest is not None:
        spec = encoder_spec(config.model, manifest, config.data.crop_size)  # its name, arguments and stem checked
        if Capability.RECONSTRUCTS in method.capabilities:
            check_decodable(spec)
    for section in dataclasses.fields(config):
        options.check(getattr(config, section.name), section.name)
    if manifest is None:
        return config
    ranks = config.train.ranks()
    if config.train.num_workers is None:  # decided once Ray runs (GPUs: one worker each)
        ranks = 1 if config.train.use_gpu else CPU_WORKERS
    ShardLoader(
        config.data.shards,
        "train",
        config.data.batch_size,
        rank=0,
        world_size=ranks,  # the epoch plan
        mode=config.data.mode,
        seed=config.train.seed,
        url_template=config.data.url_template,
        manifest=manifest,
        exclude_classes=config.data.exclude_classes(len(manifest.class_names)),
        views=config.data.training_views(method.num_views, config.augment.crop_scale),
    )
    evaluation = read_manifest(config.eval.shards) if config.eval.shards else manifest
    where = "eval.shards" if config.eval.shards else "data.shards"
    if not evaluation.labeled:
        raise ConfigError(
            f"{where}: {config.evaluation_shards} holds unlabeled images; evaluation needs labels: set "
            "eval.shards to labeled shards (e.g. `sslpipe shard folder:LABELED --out DIR`)"
        )
    if missing := [split for split in ("train", "test") if split not in evaluation.splits]:
        raise ConfigError(
            f"{where}: {config.evaluation_shards} has no {missing[0]!r} split; evaluation fits on "
            "train and scores on test"
        )
    return config


def _method(config: JobConfig) -> type[Method]:
    """The method that ``method.name`` names, once the ``method`` section holds its options."""
    method = METHODS.get(config.method.name)
    if method is None or type(config.method) is not method.Options:
        raise ConfigError(
            f"method.name: {config.method.name!r} does not name the options the method section holds "
            f"({type(config.method).__name__}); switch methods with with_values(config, "
            "{'method.name': ...}) or in the job file"
        )
    return method


def _check_combinations(config: JobConfig, method: type[Method]) -> None:
    """Keys that cannot work together: identical views for a method that needs them to differ, a linear encoder
    without a bottleneck, ONNX without its packages, a run name MLflow cannot look up."""
    if method.needs_augmentation and config.augment.preset == "none":
        others = ", ".join(preset for preset in PRESETS if preset != "none")
        raise ConfigError(
            f"augment.preset: none cannot serve {config.method.name}, whose {method.num_views} views "
            f"of an image would be identical; choose {others}"
        )
    if config.model.encoder == "linear" and Capability.RECONSTRUCTS not in method.capabilities:
        raise ConfigError(
            "model.encoder: linear needs an autoencoder's method.bottleneck (method.name: "
            f"autoencoder or vae, not {config.method.name})"
        )
    if config.export.onnx and not all(importlib.util.find_spec(name) for name in ("onnxscript", "onnxruntime")):
        raise ConfigError(
            "export.onnx needs onnx, onnxscript and onnxruntime: pip install 'sslpipe[onnx]', or set export.onnx=false"
        )
    check_run_name(config.train.name, "train.name")


def check_run_name(name: str | None, key: str) -> None:
    """A run name MLflow can look up: its filters quote a name with ``'`` or ``"`` and read ``\\`` as an escape."""
    if name and (("'" in name and '"' in name) or "\\" in name):
        raise ConfigError(
            f"{key}: {name!r} holds both ' and \" or a backslash; MLflow cannot look such a run up by its name"
        )


def _check_images(config: JobConfig, manifest: Manifest) -> None:
    """Array images square with 1 or 3 channels and at their own size; one anomaly protocol, with a class the
    shards have."""
    if not manifest.photos:
        channels, height, width = manifest.image_shape
        if height != width:
            raise ConfigError(f"{config.data.shards}: images are {height}x{width}; encoders expect square images")
        if channels not in (1, 3):
            raise ConfigError(f"{config.data.shards}: images have {channels} channels; augmentation takes 1 or 3")
        if config.data.image_size not in (None, height):
            raise ConfigError(
                f"data.image_size applies to photo shards; {config.data.shards} holds {height}x{width} "
                "arrays (re-shard the source as photos to train at another size)"
            )
    if config.data.normal_class is not None:
        if config.data.holdout_class is not None:
            raise ConfigError(
                "data.normal_class and data.holdout_class are two anomaly protocols (one-class, "
                "leave-one-out); set one of them"
            )
        if config.data.normal_class >= len(manifest.class_names):
            raise ConfigError(
                f"data.normal_class: {config.data.normal_class} is not a label of {config.data.shards}"
                f" ({len(manifest.class_names)} classes: 0-{len(manifest.class_names) - 1}; unlabeled "
                "shards have none)"
            )


def check_shared(config: JobConfig, nodes: int, exports_anywhere: bool = False) -> None:
    """On a cluster of ``nodes`` > 1, every location Ray workers on all nodes read or write (shards, checkpoints;
    exports too where trials write them, ``exports_anywhere``) must be a URL or inside a declared
    ``train.shared_folders``: a folder local to one node would leave the others reading nothing or writing apart.
    Raises one :class:`ConfigError` naming the key and the fix."""
    if nodes < 2:
        return
    locations = {"eval.shards": config.eval.shards, "train.storage_path": config.train.storage_path}
    if not config.data.url_template:  # (with a template, workers read the shards from its URLs)
        locations["data.shards"] = config.data.shards
    if exports_anywhere:
        locations["export.out_dir"] = config.export.out_dir
    shared = [storage.local_path(folder).absolute() for folder in config.train.shared_folders]
    for key, location in locations.items():
        if not location or not storage.is_local(location):
            continue
        path = storage.local_path(location).absolute()
        if not any(path.is_relative_to(folder) for folder in shared):
            raise ConfigError(
                f"{key}: {location} is a folder on one machine, but this cluster has {nodes} nodes whose Ray workers "
                "all use it; give an object-store URL (s3://...), or list a folder every node mounts in "
                "train.shared_folders"
            )
