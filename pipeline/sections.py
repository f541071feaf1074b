"""The sections of a job that no single part of the library owns: data, augmentation, training, evaluation,
tracking, export, and fine-tuning's own. (Methods, encoders and optimizers declare theirs beside themselves.)
Each field declares its type, allowed values, limits and a description (:mod:`pipeline.options`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

from augment.presets import Preset, crop_scale
from pipeline.data.decode import PhotoViews
from pipeline.data.plan import Mode
from pipeline.errors import ConfigError

DEFAULT_PHOTO_SIZE = 224


@dataclass
class DataConfig:
    shards: Annotated[str, "shard folder or URL prefix holding manifest.json"] = "data/fashion-mnist"
    url_template: Annotated[str | None, "how shard names become URLs, e.g. `pipe:aws s3 cp s3://b/{name} -`"] = None
    batch_size: Annotated[int, Gt(0), "images per step per rank"] = 256
    num_workers: Annotated[int, Ge(0), "DataLoader workers per rank (0: read in the training process)"] = 2
    mode: Annotated[Mode, "epoch semantics (see Streaming loader)"] = "exact"
    holdout_class: Annotated[
        int | None,
        Ge(0),
        "a label left out of pretraining: evaluation scores it as the anomaly (leave-one-out protocol)",
    ] = None
    normal_class: Annotated[
        int | None,
        Ge(0),
        "the only label pretraining reads: evaluation scores every other label as the anomaly (one-class protocol)",
    ] = None
    skip_bad_samples: Annotated[bool, "skip and count samples that cannot be decoded instead of failing"] = False
    decode: Annotated[
        Literal["auto", "loader", "device"],
        "photos on a GPU: decoded there (device), or by the loader processes (loader, which scale with "
        "data.num_workers); auto: on the GPU where it has a JPEG engine (A100, H100, H200, Blackwell), else the loader",
    ] = "auto"
    image_size: Annotated[
        int | None,
        Gt(0),
        "photo shards: side of the training crops and evaluation center crops "
        "(default 224); array shards keep their own size",
    ] = None

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
    preset: Annotated[Preset, "views (see Augmentation); `crop` for MAE, `none` for autoencoders and VAEs"] = "simclr"
    crop_min_scale: Annotated[
        float | None,
        Interval(gt=0, le=1),
        "smallest random crop, as a share of the image's area (unset: the preset's, 0.08; light 0.5; crop 0.2)",
    ] = None
    jitter_strength: Annotated[
        float | None,
        Ge(0),
        "simclr preset: colour jitter strength s (brightness, contrast "
        "and saturation 0.8 s, hue 0.2 s; unset: 1, or 0.5 for images of 32 px and less)",
    ] = None

    @property
    def crop_scale(self) -> tuple[float, float]:
        """The random crops' range of shares of the image's area."""
        return crop_scale(self.preset, self.crop_min_scale)

    def view_options(self) -> dict[str, float | None]:
        """The strengths :class:`~augment.ViewAugmenter` takes besides the preset."""
        return {"crop_min_scale": self.crop_min_scale, "jitter_strength": self.jitter_strength}


@dataclass
class TrainConfig:
    epochs: Annotated[int, Gt(0), "passes over the training split"] = 5
    num_workers: Annotated[
        int | None,
        Ge(0),
        "Ray Train workers (DDP ranks); 0: train in this process, without Ray Train (one rank: small jobs, "
        "debugging, a search trial that trains in its own process); unset: one per GPU Ray sees with use_gpu, else 2",
    ] = None
    use_gpu: Annotated[bool, "one GPU per worker, DDP over nccl"] = False
    cpus_per_worker: Annotated[int, Gt(0), "CPUs (and torch threads) per worker"] = 1
    sync_batchnorm: Annotated[
        bool, "BatchNorm statistics over all ranks (one all-reduce a layer, no host sync: pipeline/models/batchnorm.py)"
    ] = False
    amp: Annotated[
        Literal["auto", True, False],
        "bf16 autocast; auto: where the device has native bf16 (GPUs from Ampere, CPUs with AVX512-BF16, AMX or Arm "
        "BF16), float32 elsewhere",
    ] = "auto"
    compile: Annotated[bool, "torch.compile the model (opt-in: on CPUs it does not pay, see Performance)"] = False
    seed: Annotated[int, Ge(0), "initial weights, data order, augmentation and noise streams"] = 0
    name: Annotated[
        str | None, "run name; rerunning with the same name and storage resumes (default: method and time)"
    ] = None
    storage_path: Annotated[str, "checkpoints: a folder or URL (`s3://...`)"] = "ray_results"
    shared_folders: Annotated[
        list[str],
        "local folders every node of a multi-node cluster mounts at the same path (NFS, EFS): accepted there for "
        "shards, storage_path and exports, which Ray workers on every node read or write",
    ] = field(default_factory=list)
    max_failures: Annotated[int, Ge(0), "worker failures survived by restarting from the last checkpoint"] = 1
    start_attempts: Annotated[int, Ge(-1), "tries (60 s each) to get the workers' resources; -1: wait forever"] = 10
    max_steps_per_epoch: Annotated[int | None, Gt(0), "caps the batches of every epoch (benchmarks, smoke runs)"] = None

    def ranks(self) -> int:
        """The data-parallel ranks once ``num_workers`` is decided: that many Ray Train workers, 1 in-process (0)."""
        return max(1, self.num_workers or 0)


@dataclass
class EvalConfig:
    batch_size: Annotated[int, Gt(0), "images per evaluation batch"] = 1024
    probe_max_iter: Annotated[
        int,
        Gt(0),
        "L-BFGS iterations of the linear probe (the torch probe's final fit; "
        "each fit of its weight-decay grid gets a fifth)",
    ] = 500
    knn_k: Annotated[int, Gt(0), "neighbours of the kNN classifier"] = 200
    knn_temperature: Annotated[float, Gt(0), "kNN vote weight exp(similarity / temperature)"] = 0.1
    baselines: Annotated[bool, "also probe raw pixels and a randomly initialised encoder"] = True
    pixels_max_gb: Annotated[
        float,
        Gt(0),
        "raw-pixel baseline: a split whose float32 pixels take more GiB is "
        "downsampled to 32 px and, still above, a seeded subsample that fits "
        "(params `eval.baseline_pixels_*` record what was used)",
    ] = 0.25
    anomaly_knn_k: Annotated[
        int,
        Gt(0),
        "anomaly protocols: the kNN score is the mean cosine distance to this many nearest training embeddings",
    ] = 5
    anomaly_pca_k: Annotated[
        int,
        Gt(0),
        "anomaly protocols: PCA components of the residual baseline for methods "
        "without a bottleneck (autoencoders and VAEs use theirs)",
    ] = 32
    online_knn: Annotated[
        int, Ge(0), "> 0: each epoch, online_knn_accuracy of the first n train images voting for the next n/4"
    ] = 0
    shards: Annotated[
        str | None,
        "labeled shards that evaluation reads (train split: probe fit and kNN bank, test "
        "split: scores); default data.shards",
    ] = None


@dataclass
class TrackConfig:
    experiment: Annotated[str, "MLflow experiment"] = "sslpipe"
    tracking_uri: Annotated[str | None, "default: $MLFLOW_TRACKING_URI, else `./mlflow.db` (sqlite)"] = None
    registered_model: Annotated[str, "MLflow registered model the encoder becomes a version of"] = "sslpipe-encoder"
    server_wait_s: Annotated[float, Ge(0), "after training, how long to wait for a tracking server that went away"] = (
        600.0
    )

    def store(self) -> str:
        """The tracking store to use, made absolute so Ray workers (whose cwd differs) write to the same place."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri or "sqlite:///mlflow.db"
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).absolute())
        return str(Path(uri).absolute()) if "://" not in uri else uri


@dataclass
class ExportConfig:
    out_dir: Annotated[str, "folder or URL prefix the encoder files go to, under the run name"] = "exports"
    onnx: Annotated[bool, "also write encoder.onnx, checked with onnxruntime (pip install 'sslpipe[onnx]')"] = False


@dataclass
class FinetuneConfig:
    fractions: Annotated[list[float], "labeled fractions of the train split, each class-balanced"] = field(
        default_factory=lambda: [0.01, 0.1]
    )
    epochs: Annotated[list[int], "epochs for each fraction, or one value for all (SimCLR's: 60 for 1%, 30 for 10%)"] = (
        field(default_factory=lambda: [60, 30])
    )
    batch_size: Annotated[int, Gt(0), "images per step per rank (at most a rank's share of the subset)"] = 64
    lr: Annotated[float, Gt(0), "AdamW learning rate of the linear head: one epoch of warm-up, then a cosine to 0"] = (
        1e-3
    )
    encoder_lr_scale: Annotated[float, Ge(0), "the encoder's learning rate over the head's"] = 1.0
    weight_decay: Annotated[float, Ge(0), "not applied to BatchNorm weights and biases"] = 1e-4
    augment: Annotated[Preset, "views of the labeled images (`light`: crop and flip, brightness and contrast)"] = (
        "light"
    )

    def schedule(self) -> list[tuple[float, int]]:
        """``(fraction, epochs)`` for each fraction; raises naming the key when a value is not a fraction in
        (0, 1] or a positive whole number of epochs, or when there is neither one epochs value nor one per
        fraction."""
        fractions = [_number(value, float, "finetune.fractions") for value in self.fractions]
        epochs = [_number(value, int, "finetune.epochs") for value in self.epochs]
        if not fractions or any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) < len(fractions):
            raise ConfigError(
                f"finetune.fractions: {self.fractions!r}; give distinct fractions in (0, 1], e.g. [0.01, 0.1]"
            )
        if any(e < 1 for e in epochs) or len(epochs) not in (1, len(fractions)):
            raise ConfigError(
                f"finetune.epochs: {self.epochs!r} for fractions {self.fractions!r}; give one whole "
                "number > 0 for every fraction, or one for all"
            )
        return list(zip(fractions, epochs * len(fractions) if len(epochs) == 1 else epochs, strict=True))


def _number(value: Any, kind: type, key: str) -> float | int:
    """``value`` (YAML reads ``1e-2`` as text) as a ``kind`` number, or a :class:`ConfigError` naming ``key``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise ConfigError(f"{key}: {value!r} is not a{'' if kind is float else ' whole'} number")
    return kind(number)
