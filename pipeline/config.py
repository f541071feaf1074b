"""The job: its sections, loaded from YAML with ``section.key=value`` overrides, and :func:`validate`, the one check
of everything that can be checked before any data is read or Ray starts.

The shared sections are declared here, the ``model`` section beside the models (``pipeline/models/options.py``)
and each method's own options beside the method (``pipeline/methods/<name>.py``): ``method.name`` picks which
options the ``method`` section takes, and a key the chosen method does not have is refused. Every field declares
its type, allowed values, limits and a description (:mod:`pipeline.options`); :func:`reference` renders them as
the README's table of keys.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Interval

from augment.presets import PRESETS, Preset, check_strengths, crop_scale
from pipeline import options
from pipeline.data import ShardLoader, read_manifest
from pipeline.data.decode import PhotoViews
from pipeline.data.manifest import Manifest
from pipeline.data.plan import Mode
from pipeline.errors import ConfigError
from pipeline.methods import METHODS, MethodOptions
from pipeline.methods.base import ReconstructionMethod
from pipeline.methods.simclr import SimCLROptions
from pipeline.models import ModelConfig, check_encoder, encoder_spec
from pipeline.models.decoders import check_decodable


DEFAULT_PHOTO_SIZE = 224
CPU_WORKERS = 2  # train.num_workers unset, without GPUs


@dataclass
class DataConfig:
    shards: Annotated[str, "shard folder or URL prefix holding manifest.json"] = "data/fashion-mnist"
    url_template: Annotated[str | None, "how shard names become URLs, e.g. `pipe:aws s3 cp s3://b/{name} -`"] = None
    batch_size: Annotated[int, Gt(0), "images per step per rank"] = 256
    num_workers: Annotated[int, Ge(0), "DataLoader workers per rank (0: read in the training process)"] = 2
    mode: Annotated[Mode, "epoch semantics (see Streaming loader)"] = "exact"
    holdout_class: Annotated[int | None, Ge(0), "a label left out of pretraining: evaluation scores it as the "
                                                "anomaly (leave-one-out protocol)"] = None
    normal_class: Annotated[int | None, Ge(0), "the only label pretraining reads: evaluation scores every other "
                                               "label as the anomaly (one-class protocol)"] = None
    skip_bad_samples: Annotated[bool, "skip and count samples that cannot be decoded instead of failing"] = False
    image_size: Annotated[int | None, Gt(0), "photo shards: side of the training crops and evaluation center crops "
                                             "(default 224); array shards keep their own size"] = None

    def exclude_classes(self, num_classes: int) -> tuple[int, ...]:
        """The labels pretraining leaves out of ``num_classes``: the held-out class, or all but the normal one;
        evaluation scores them as anomalies."""
        if self.normal_class is not None:
            return tuple(label for label in range(num_classes) if label != self.normal_class)
        return () if self.holdout_class is None else (self.holdout_class,)

    @property
    def crop_size(self) -> int:
        """The side photos are cropped to."""
        return self.image_size or DEFAULT_PHOTO_SIZE

    def training_views(self, num_views: int, scale: tuple[float, float]) -> PhotoViews:
        """How training crops photos: ``num_views`` random-resized crops of :attr:`crop_size`, each a share of the
        photo's area within ``scale``."""
        return PhotoViews(self.crop_size, num_views, random=True, scale=scale)


@dataclass
class AugmentConfig:
    preset: Annotated[Preset, "views (see Augmentation); `none` for autoencoders and VAEs"] = "simclr"
    crop_min_scale: Annotated[float | None, Interval(gt=0, le=1), "smallest random crop, as a share of the image's "
                              "area (unset: the preset's, 0.08; light 0.5)"] = None
    jitter_strength: Annotated[float | None, Ge(0), "simclr preset: colour jitter strength s (brightness, contrast "
                               "and saturation 0.8 s, hue 0.2 s; unset: 1, or 0.5 for images of 32 px and less)"] = None

    @property
    def crop_scale(self) -> tuple[float, float]:
        """The random crops' range of shares of the image's area."""
        return crop_scale(self.preset, self.crop_min_scale)

    def view_options(self) -> dict[str, float | None]:
        """The strengths :class:`~augment.ViewAugmenter` takes besides the preset."""
        return {"crop_min_scale": self.crop_min_scale, "jitter_strength": self.jitter_strength}


@dataclass
class OptimConfig:
    name: Annotated[Literal["adamw", "adam", "lars"], "optimizer"] = "adamw"
    lr: Annotated[float, Gt(0), "at 256 images per global step; scaled linearly with the global batch"] = 2e-3
    weight_decay: Annotated[float, Ge(0), "not applied to BatchNorm weights and biases"] = 1e-4
    momentum: Annotated[float, Interval(ge=0, lt=1), "lars: momentum"] = 0.9
    warmup_epochs: Annotated[float, Ge(0), "linear warm-up, then a cosine to 0"] = 1.0


@dataclass
class TrainConfig:
    epochs: Annotated[int, Gt(0), "passes over the training split"] = 5
    num_workers: Annotated[int | None, Gt(0), "Ray Train workers (DDP ranks); unset: one per GPU Ray sees with "
                                              "use_gpu, else 2"] = None
    use_gpu: Annotated[bool, "one GPU per worker, DDP over nccl"] = False
    cpus_per_worker: Annotated[int, Gt(0), "CPUs (and torch threads) per worker"] = 1
    sync_batchnorm: Annotated[bool, "BatchNorm statistics over all ranks"] = False
    amp: Annotated[bool, "bf16 autocast, on GPUs only"] = True
    compile: Annotated[bool, "torch.compile the model (opt-in: on CPUs it does not pay, see Performance)"] = False
    seed: Annotated[int, Ge(0), "initial weights, data order, augmentation and noise streams"] = 0
    name: Annotated[str | None, "run name; rerunning with the same name and storage resumes (default: "
                                "method and time)"] = None
    storage_path: Annotated[str, "checkpoints: a folder or URL (`s3://...`)"] = "ray_results"
    max_failures: Annotated[int, Ge(0), "worker failures survived by restarting from the last checkpoint"] = 1
    start_attempts: Annotated[int, Ge(-1), "tries (60 s each) to get the workers' resources; -1: wait forever"] = 10
    max_steps_per_epoch: Annotated[int | None, Gt(0), "caps the batches of every epoch (benchmarks, smoke "
                                                      "runs)"] = None


@dataclass
class EvalConfig:
    batch_size: Annotated[int, Gt(0), "images per evaluation batch"] = 1024
    probe_max_iter: Annotated[int, Gt(0), "L-BFGS iterations of the linear probe (the torch probe's final fit; "
                                          "each fit of its weight-decay grid gets a fifth)"] = 500
    knn_k: Annotated[int, Gt(0), "neighbours of the kNN classifier"] = 200
    knn_temperature: Annotated[float, Gt(0), "kNN vote weight exp(similarity / temperature)"] = 0.1
    baselines: Annotated[bool, "also probe raw pixels and a randomly initialised encoder"] = True
    pixels_max_gb: Annotated[float, Gt(0), "raw-pixel baseline: a split whose float32 pixels take more GiB is "
                                           "downsampled to 32 px and, still above, a seeded subsample that fits "
                                           "(params `eval.baseline_pixels_*` record what was used)"] = 0.25
    anomaly_knn_k: Annotated[int, Gt(0), "anomaly protocols: the kNN score is the mean cosine distance to this many "
                                         "nearest training embeddings"] = 5
    anomaly_pca_k: Annotated[int, Gt(0), "anomaly protocols: PCA components of the residual baseline for methods "
                                         "without a bottleneck (autoencoders and VAEs use theirs)"] = 32
    online_knn: Annotated[int, Ge(0), "> 0: each epoch, online_knn_accuracy of the first n train images voting "
                                      "for the next n/4"] = 0
    shards: Annotated[str | None, "labeled shards that evaluation reads (train split: probe fit and kNN bank, test "
                                  "split: scores); default data.shards"] = None


@dataclass
class TrackConfig:
    experiment: Annotated[str, "MLflow experiment"] = "sslpipe"
    tracking_uri: Annotated[str | None, "default: $MLFLOW_TRACKING_URI, else `./mlflow.db` (sqlite)"] = None
    registered_model: Annotated[str, "MLflow registered model the encoder becomes a version of"] = "sslpipe-encoder"
    server_wait_s: Annotated[float, Ge(0), "after training, how long to wait for a tracking server that went "
                                           "away"] = 600.0


@dataclass
class ExportConfig:
    out_dir: Annotated[str, "folder or URL prefix the encoder files go to, under the run name"] = "exports"
    onnx: Annotated[bool, "also write encoder.onnx, checked with onnxruntime (pip install 'sslpipe[onnx]')"] = False


@dataclass
class FinetuneConfig:
    fractions: Annotated[list[float], "`sslpipe finetune`: labeled fractions of the train split, each "
                                      "class-balanced"] = field(default_factory=lambda: [0.01, 0.1])
    epochs: Annotated[list[int], "epochs for each fraction, or one value for all (SimCLR's: 60 for 1%, 30 for "
                                 "10%)"] = field(default_factory=lambda: [60, 30])
    batch_size: Annotated[int, Gt(0), "images per step per rank (at most a rank's share of the subset)"] = 64
    lr: Annotated[float, Gt(0), "AdamW learning rate of the linear head: one epoch of warm-up, then a cosine to "
                                "0"] = 1e-3
    encoder_lr_scale: Annotated[float, Ge(0), "the encoder's learning rate over the head's"] = 1.0
    weight_decay: Annotated[float, Ge(0), "not applied to BatchNorm weights and biases"] = 1e-4
    augment: Annotated[Preset, "views of the labeled images (`light`: crop and flip, brightness and "
                               "contrast)"] = "light"

    def schedule(self) -> list[tuple[float, int]]:
        """``(fraction, epochs)`` for each fraction; raises naming the key when a value is not a fraction in
        (0, 1] or a positive whole number of epochs, or when there is neither one epochs value nor one per
        fraction."""
        fractions = [_number(value, float, "finetune.fractions") for value in self.fractions]
        epochs = [_number(value, int, "finetune.epochs") for value in self.epochs]
        if not fractions or any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) < len(fractions):
            raise ConfigError(f"finetune.fractions: {self.fractions!r}; give distinct fractions in (0, 1], e.g. "
                              "[0.01, 0.1]")
        if any(e < 1 for e in epochs) or len(epochs) not in (1, len(fractions)):
            raise ConfigError(f"finetune.epochs: {self.epochs!r} for fractions {self.fractions!r}; give one whole "
                              "number > 0 for every fraction, or one for all")
        return list(zip(fractions, epochs * len(fractions) if len(epochs) == 1 else epochs))


def _number(value: Any, kind: type, key: str) -> float | int:
    """``value`` (YAML reads ``1e-2`` as text) as a ``kind`` number, or a :class:`ConfigError` naming ``key``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise ConfigError(f"{key}: {value!r} is not a{'' if kind is float else ' whole'} number")
    return kind(number)


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodOptions = field(default_factory=SimCLROptions)  # the options of the method that method.name names
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every key that applies to this job: the method's own options, and only the ``model`` keys it reads."""
        raw = {section.name: dataclasses.asdict(getattr(self, section.name)) for section in dataclasses.fields(self)}
        raw["method"] = {"name": self.method.name, **raw["method"]}
        raw["model"] = {key: value for key, value in raw["model"].items() if _applies(key, self.method.name)}
        return raw

    @property
    def evaluation_shards(self) -> str:
        return self.eval.shards or self.data.shards

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key that applies to this job (see :meth:`to_dict`)."""
        return {f"{s}.{k}": v for s, section in self.to_dict().items() for k, v in section.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "config") -> JobConfig:
        """Sections from a mapping; every key is checked for its type, allowed values and limits."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(raw) - set(hints))
        if unknown:
            raise ConfigError(f"{origin}: unknown section {unknown[0]!r}; sections are {', '.join(hints)}")
        method = _method_options(raw.get("method") or {}, origin)
        model = raw.get("model") or {}
        if isinstance(model, dict) and (extra := [key for key in model if not _applies(key, method.name)]):
            readers = ", ".join(name for name, cls in METHODS.items() if extra[0] in cls.model_keys)
            raise ConfigError(f"{origin}: model.{extra[0]} does not apply to {method.name}; {readers} read it")
        built = {name: options.build(hints[name], values or {}, f"{origin}: {name}")
                 for name, values in raw.items() if name != "method"}
        return cls(**built, method=method)


def _applies(model_key: str, method: str) -> bool:
    """Whether ``model.<model_key>`` applies to ``method``: a key some method reads (``model_keys``) applies to
    those methods only."""
    return model_key in METHODS[method].model_keys or all(model_key not in m.model_keys for m in METHODS.values())


def _method_options(values: Any, origin: str) -> MethodOptions:
    """The ``method`` section: the options class of ``values["name"]`` (default simclr) built from the rest."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: method: expected a mapping, got {values!r}")
    values = dict(values)
    name = values.pop("name", SimCLROptions.name)
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"{origin}: method.name: unknown method {name!r}; choose one of {', '.join(METHODS)}")
    own = options.keys(METHODS[name].Options)
    takes = f"{name} takes {', '.join(own)}"
    for key in values:
        if key not in own:
            applies = any(key in options.keys(method.Options) for method in METHODS.values())
            problem = f"method.{key} does not apply to {name}" if applies else f"unknown key 'method.{key}'"
            raise ConfigError(f"{origin}: {problem}; {takes}")
    return options.build(METHODS[name].Options, values, f"{origin}: method")


def validate(config: JobConfig, manifest: Manifest | None = None) -> JobConfig:
    """``config`` once everything that can be checked without reading data holds; with the shards' ``manifest``,
    also what depends on their images, classes and shard sizes. ``pretrain``, ``tune`` and ``sslpipe validate``
    call this before Ray starts; a failure is one :class:`ConfigError` naming the key or file."""
    for section in dataclasses.fields(config):  # again: a config may have been changed in Python
        options.check(getattr(config, section.name), section.name)
    method = METHODS.get(config.method.name)
    if method is None or type(config.method) is not method.Options:
        raise ConfigError(f"method.name: {config.method.name!r} does not name the options the method section holds "
                          f"({type(config.method).__name__}); switch methods with with_values(config, "
                          "{'method.name': ...}) or in the job file")
    if method.needs_augmentation and config.augment.preset == "none":
        others = ", ".join(preset for preset in PRESETS if preset != "none")
        raise ConfigError(f"augment.preset: none cannot serve {config.method.name}, whose {method.num_views} views "
                          f"of an image would be identical; choose {others}")
    check_strengths(config.augment.preset, config.augment.jitter_strength)
    if config.model.encoder == "linear" and not issubclass(method, ReconstructionMethod):
        raise ConfigError("model.encoder: linear needs an autoencoder's method.bottleneck (method.name: "
                          f"autoencoder or vae, not {config.method.name})")
    check_encoder(config.model)
    if config.export.onnx and not all(importlib.util.find_spec(name) for name in ("onnxscript", "onnxruntime")):
        raise ConfigError("export.onnx needs onnx, onnxscript and onnxruntime: pip install 'sslpipe[onnx]', or set "
                          "export.onnx=false")
    check_run_name(config.train.name, "train.name")
    config.finetune.schedule()
    if manifest is not None:
        _validate_data(config, manifest)
    return config


def with_workers(config: JobConfig, resources: Mapping[str, float]) -> JobConfig:
    """``config`` with ``train.num_workers`` decided: as set, else one worker per GPU in ``resources`` (Ray's
    ``cluster_resources()``) with ``train.use_gpu``, else :data:`CPU_WORKERS`."""
    if config.train.num_workers is not None:
        return config
    workers = CPU_WORKERS
    if config.train.use_gpu:
        workers = int(resources.get("GPU", 0))
        if workers < 1:
            raise ConfigError("train.use_gpu: Ray sees no GPU in this cluster; start Ray on GPU nodes, or set "
                              "train.use_gpu=false")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, num_workers=workers))


def check_run_name(name: str | None, key: str) -> None:
    """A run name MLflow can look up: its filters quote a name with ``'`` or ``"`` and read ``\\`` as an escape."""
    if name and (("'" in name and '"' in name) or "\\" in name):
        raise ConfigError(f"{key}: {name!r} holds both ' and \" or a backslash; MLflow cannot look such a run up "
                          "by its name")


def _validate_data(config: JobConfig, manifest: Manifest) -> None:
    """Images square with 1 or 3 channels (arrays) or photos, decodable by a reconstructing method's decoder; the
    training split enough for every rank (the epoch plan) and any held-out class one of its classes; labeled
    evaluation shards with train and test splits."""
    if not manifest.photos:
        channels, height, width = manifest.image_shape
        if height != width:
            raise ConfigError(f"{config.data.shards}: images are {height}x{width}; encoders expect square images")
        if channels not in (1, 3):
            raise ConfigError(f"{config.data.shards}: images have {channels} channels; augmentation takes 1 or 3")
        if config.data.image_size not in (None, height):
            raise ConfigError(f"data.image_size applies to photo shards; {config.data.shards} holds {height}x{width} "
                              "arrays (re-shard the source as photos to train at another size)")
    if config.data.normal_class is not None:
        if config.data.holdout_class is not None:
            raise ConfigError("data.normal_class and data.holdout_class are two anomaly protocols (one-class, "
                              "leave-one-out); set one of them")
        if config.data.normal_class >= len(manifest.class_names):
            raise ConfigError(f"data.normal_class: {config.data.normal_class} is not a label of {config.data.shards}"
                              f" ({len(manifest.class_names)} classes: 0-{len(manifest.class_names) - 1}; unlabeled "
                              "shards have none)")
    spec = encoder_spec(config.model, manifest, config.data.crop_size)  # its name, arguments and stem checked
    if issubclass(METHODS[config.method.name], ReconstructionMethod):
        check_decodable(spec)
    ranks = config.train.num_workers or (1 if config.train.use_gpu else CPU_WORKERS)  # GPUs: known once Ray runs
    ShardLoader(config.data.shards, "train", config.data.batch_size, rank=0, world_size=ranks,
                mode=config.data.mode, seed=config.train.seed, url_template=config.data.url_template,
                manifest=manifest, exclude_classes=config.data.exclude_classes(len(manifest.class_names)),
                views=config.data.training_views(METHODS[config.method.name].num_views, config.augment.crop_scale))
    evaluation = read_manifest(config.eval.shards) if config.eval.shards else manifest
    where = "eval.shards" if config.eval.shards else "data.shards"
    if not evaluation.labeled:
        raise ConfigError(f"{where}: {config.evaluation_shards} holds unlabeled images; evaluation needs labels: set "
                          "eval.shards to labeled shards (e.g. `sslpipe shard folder:LABELED --out DIR`)")
    if missing := [split for split in ("train", "test") if split not in evaluation.splits]:
        raise ConfigError(f"{where}: {config.evaluation_shards} has no {missing[0]!r} split; evaluation fits on "
                          "train and scores on test")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping of sections (empty file: ``{}``)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: job config not found") from None
    except yaml.YAMLError as exn:
        raise ConfigError(f"{path}: not valid YAML ({exn})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``raw`` with ``section.key=value`` overrides (values parsed as YAML) set in place."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or key.count(".") != 1:
            raise ConfigError(f"override {override!r}: expected section.key=value, e.g. train.epochs=1")
        section, name = key.split(".")
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section][name] = yaml.safe_load(text) if text else None
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Read a YAML job file (or start from defaults), apply ``section.key=value`` overrides (YAML values) and
    :func:`validate` the result."""
    raw = read_yaml(path) if path is not None else {}
    return validate(JobConfig.from_dict(apply_overrides(raw, overrides), str(path) if path else "defaults"))


def with_values(config: JobConfig, values: dict[str, Any], origin: str) -> JobConfig:
    """A copy of ``config`` with ``{"section.key": value}`` set, each checked like a job file's value. Setting
    ``method.name`` to another method starts that method's options from their defaults."""
    raw = config.to_dict()
    switched = values.get("method.name", config.method.name)
    if switched != config.method.name:
        raw["method"] = {"name": switched}
        if switched in METHODS:
            raw["model"] = {key: value for key, value in raw["model"].items() if _applies(key, switched)}
    sections = typing.get_type_hints(JobConfig)
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in raw or (section != "method" and name not in options.keys(sections[section])):
            raise ConfigError(f"{origin}: unknown key {key!r}; keys look like method.temperature or optim.lr")
        raw[section][name] = value
    return JobConfig.from_dict(raw, origin)


def dump_config(config: JobConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def reference() -> str:
    """Every key of a job as a Markdown table: the shared sections, each method's own options after
    ``method.name``, and which methods read the ``model`` keys that only some methods read."""
    hints = typing.get_type_hints(JobConfig)
    rows = []  # (key, for which methods, takes, default, what)
    for section in (each.name for each in dataclasses.fields(JobConfig)):
        if section != "method":
            for key, *rest in options.describe(hints[section]):
                readers = [name for name, method in METHODS.items() if key in method.model_keys]
                rows.append((f"{section}.{key}", ", ".join(readers), *rest))
            continue
        rows.append(("method.name", "", ", ".join(f"`{name}`" for name in METHODS), f"`{SimCLROptions.name}`",
                     "the method; the keys below apply to theirs"))
        for name, method in METHODS.items():
            rows += [(f"method.{key}", name, *rest) for key, *rest in options.describe(method.Options)]
    lines = ["| key | takes | default | what |", "| --- | --- | --- | --- |"]
    for key, note, takes, default, what in rows:
        lines.append(f"| `{key}`{f' ({note})' if note else ''} | {takes} | {default} | {what} |")
    return "\n".join(lines)
