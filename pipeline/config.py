"""Job configuration: typed sections, loaded from YAML with ``dotted.key=value`` overrides, validated by name.

Unknown sections or keys, values of the wrong type and values out of range (``LIMITS``) raise :class:`ConfigError`
naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError


@dataclass
class DataConfig:
    shards: str = "data/fashion-mnist"  # shard folder or URL prefix holding manifest.json
    url_template: str | None = None  # e.g. "pipe:aws s3 cp s3://bucket/shards/{name} -"
    batch_size: int = 256  # per rank
    num_workers: int = 2  # DataLoader workers per rank
    mode: str = "exact"  # or "resampled", see pipeline.data.plan
    holdout_class: int | None = None  # a label index left out of pretraining: evaluation scores it as the anomaly
    skip_bad_samples: bool = False  # skip samples that cannot be decoded (logged, counted in skipped_samples)

    @property
    def exclude_classes(self) -> tuple[int, ...]:
        return () if self.holdout_class is None else (self.holdout_class,)


@dataclass
class AugmentConfig:
    preset: str = "simclr"  # simclr, byol, light, none (autoencoders)


@dataclass
class ModelConfig:
    encoder: str = "small_cnn"  # small_cnn, resnet18, resnet50, linear (autoencoder only)
    width: int = 24  # small_cnn: channels of the first block
    embed_dim: int = 256  # small_cnn: size of the representation
    cifar_stem: bool = True  # resnets: 3x3 stem without max-pool, for 28-64 px images
    head_hidden: int = 512
    head_dim: int = 128


@dataclass
class MethodConfig:
    name: str = "simclr"  # simclr, byol, autoencoder, vae
    temperature: float = 0.5  # simclr
    ema_base: float = 0.99  # byol: target momentum at step 0, rising to 1 on a cosine
    bottleneck: int = 32  # autoencoder and vae: code (latent) size k
    sparsity: str = "none"  # autoencoder: none, l1 or kl (codes through a sigmoid, target rate sparsity_target)
    sparsity_weight: float = 1.0e-3
    sparsity_target: float = 0.05
    corruption: str | None = None  # autoencoder: gaussian, mask or salt_pepper makes it a denoising autoencoder
    corruption_amount: float = 0.3
    beta: float = 1.0  # vae: KL weight (beta-VAE when > 1)
    kl_anneal_steps: int = 0  # vae: steps over which the KL weight ramps from 0 to beta
    free_bits: float = 0.0  # vae: nats per latent dimension that cost nothing
    likelihood: str = "bernoulli"  # vae: bernoulli (pixels in [0, 1]) or gaussian (std decoder_std)
    decoder_std: float = 0.1


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw, adam, lars
    lr: float = 2e-3  # at batch_size * world size = 256; scaled linearly with the global batch
    weight_decay: float = 1e-4  # not applied to BatchNorm weights and biases
    momentum: float = 0.9  # lars
    warmup_epochs: float = 1.0


@dataclass
class TrainConfig:
    epochs: int = 5
    num_workers: int = 2  # Ray Train workers (DDP ranks)
    use_gpu: bool = False
    cpus_per_worker: int = 1
    sync_batchnorm: bool = False
    amp: bool = True  # bf16 autocast, on GPU only
    seed: int = 0
    name: str | None = None  # Ray Train run name; rerunning with the same name and storage resumes
    storage_path: str = "ray_results"
    max_failures: int = 1  # worker failures survived by restarting from the last checkpoint
    start_attempts: int = 10  # tries (60 s each) to get the workers' resources before failing; -1: wait forever
    max_steps_per_epoch: int | None = None  # caps the batches of every epoch (benchmarks, smoke runs)


@dataclass
class EvalConfig:
    batch_size: int = 1024
    probe_max_iter: int = 500  # lbfgs iterations; the raw-pixel baseline (784-d) dominates evaluation time
    knn_k: int = 200
    knn_temperature: float = 0.1
    baselines: bool = True  # also probe raw pixels and a randomly initialised encoder
    online_knn: int = 0  # > 0: each epoch, online_knn_accuracy of the first n train images voting for the next n/4


@dataclass
class TrackConfig:
    experiment: str = "sslpipe"
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    registered_model: str = "sslpipe-encoder"
    server_wait_s: float = 600.0  # after training, how long to wait for a tracking server that went away


@dataclass
class ExportConfig:
    out_dir: str = "exports"


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every field."""
        return {f"{s}.{k}": v for s, section in self.to_dict().items() for k, v in section.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "config") -> JobConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        built = {}
        for name, values in raw.items():
            if name not in sections:
                raise ConfigError(f"{origin}: unknown section {name!r}; sections are {', '.join(sections)}")
            section_cls = typing.get_type_hints(cls)[name]
            built[name] = _build_section(section_cls, values or {}, f"{origin}: {name}")
        config = cls(**built)
        _check_limits(config, origin)
        return config


# Numeric keys and the values they may take (``None``, where a key allows it, is always fine).
LIMITS = {
    "> 0": (lambda v: v > 0, (
        "data.batch_size", "model.width", "model.embed_dim", "model.head_hidden", "model.head_dim",
        "method.temperature", "method.bottleneck", "method.decoder_std", "optim.lr", "train.epochs",
        "train.num_workers", "train.cpus_per_worker", "train.max_steps_per_epoch", "eval.batch_size",
        "eval.probe_max_iter", "eval.knn_k", "eval.knn_temperature",
    )),
    ">= 0": (lambda v: v >= 0, (
        "data.num_workers", "data.holdout_class", "method.sparsity_weight", "method.beta", "method.kl_anneal_steps",
        "method.free_bits", "optim.weight_decay", "optim.warmup_epochs", "train.max_failures", "eval.online_knn",
        "track.server_wait_s",
    )),
    "in [0, 1)": (lambda v: 0 <= v < 1, ("method.ema_base", "optim.momentum")),
    "in (0, 1)": (lambda v: 0 < v < 1, ("method.sparsity_target",)),
    "in [0, 1]": (lambda v: 0 <= v <= 1, ("method.corruption_amount",)),
}


def _check_limits(config: JobConfig, origin: str) -> None:
    values = config.flat()
    for limit, (holds, keys) in LIMITS.items():
        for key in keys:
            if values[key] is not None and not holds(values[key]):
                raise ConfigError(f"{origin}: {key} must be {limit}, got {values[key]!r}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against (or, for strings from the command line, converted to) type ``hint``."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is type(None):
            continue
        if kind is bool and isinstance(value, bool):
            return value
        if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if kind is int and value != int(value):
                continue
            return kind(value)
        if kind is str and isinstance(value, str):
            return value
        if kind in (int, float) and isinstance(value, str):  # PyYAML reads 1e-3 as a string
            try:
                return _coerce(float(value), hint, where)
            except (ValueError, ConfigError):
                continue
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def _build_section(section_cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(section_cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; keys are {', '.join(hints)}")
    return section_cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` of config ``key`` if it is one of ``allowed``, else a :class:`ConfigError` naming the key."""
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r}; choose one of {', '.join(allowed)}")
    return value


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
    """Read a YAML job file (or start from defaults) and apply ``section.key=value`` overrides (YAML values)."""
    raw = read_yaml(path) if path is not None else {}
    return JobConfig.from_dict(apply_overrides(raw, overrides), str(path) if path else "defaults")


def with_values(config: JobConfig, values: dict[str, Any], origin: str) -> JobConfig:
    """A copy of ``config`` with ``{"section.key": value}`` set, each checked like a job file's value."""
    raw = config.to_dict()
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in raw or name not in raw[section]:
            raise ConfigError(f"{origin}: unknown key {key!r}; keys look like method.temperature or optim.lr")
        raw[section][name] = value
    return JobConfig.from_dict(raw, origin)


def dump_config(config: JobConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
