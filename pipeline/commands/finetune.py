"""``sslpipe finetune``: label efficiency of an exported encoder. For each labeled fraction (a class-balanced subset
of the train split, SimCLR's semi-supervised protocol) the encoder plus a linear head is fine-tuned end to end on
Ray Train, and so is a randomly initialised encoder of the same spec with the same recipe and seed; each is scored
on the whole test split.

The job config is the export's pretraining job (its ``encoder.json``) with the run-specific keys dropped
(``train.name``, ``train.max_steps_per_epoch``, the ``export`` section) and the command's overrides applied; the
labeled shards are ``eval.shards`` (else ``data.shards``). Each fraction's subset is written as shards under
``train.storage_path/<run name>/labeled-<pct>``.

MLflow: a parent run with one nested run per fine-tuning (fraction x init), all tagged with the pretraining run
(:data:`PRETRAIN_TAG`); the parent, and the pretraining run where it is in the same store, get
``finetune_<pct>_accuracy`` and ``finetune_<pct>_random_init_accuracy`` (``<pct>``: ``1pct``, ``10pct``, ...).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import storage
from pipeline.config.files import parse_overrides
from pipeline.config.job_config import FinetuneJob, with_values
from pipeline.config.validation import validate
from pipeline.data import LabeledShards, Manifest, read_manifest
from pipeline.data.subset import write_subset
from pipeline.errors import ConfigError
from pipeline.evaluate.classifier import SplitAccuracy
from pipeline.models import EncoderSpec
from pipeline.sections import AugmentConfig
from pipeline.track.run import TrackedRun, tracked_run
from pipeline.train import fit
from pipeline.train.finetuning import Finetuning

PRETRAIN_TAG = "sslpipe.pretrain_run_id"  # on every fine-tuning run: the run that pretrained the encoder
FINETUNE_TAG = "sslpipe.finetune_run_id"  # on the pretraining run: the latest fine-tuning parent run
FRACTION_TAG, INIT_TAG = "sslpipe.finetune_fraction", "sslpipe.finetune_init"
INITS = ("pretrained", "random_init")
RUN_KEYS = ("name", "max_steps_per_epoch")  # train keys that describe the pretraining run, not a fine-tuning


@dataclass
class FinetuneRow:
    fraction: float
    labels: int  # labeled images in the subset
    epochs: int
    accuracy: dict[str, float]  # test accuracy by init (INITS)
    run_ids: dict[str, str]


@dataclass
class FinetuneSummary:
    name: str
    rows: list[FinetuneRow]
    parent_run_id: str
    pretrain_run_id: str | None
    on_pretraining_run: bool  # whether the pretraining run (in this store) got the results
    tracking_uri: str


def pct(fraction: float) -> str:
    """``0.01 -> "1pct"``, ``0.1 -> "10pct"``, ``0.005 -> "0.5pct"``."""
    return f"{round(fraction * 100, 6):g}pct"


def metric_name(fraction: float, init: str) -> str:
    return f"finetune_{pct(fraction)}_{'' if init == 'pretrained' else 'random_init_'}accuracy"


def finetune_config(
    pretraining: dict[str, Any], overrides: Sequence[str] = (), shards: str | None = None, origin: str = "encoder.json"
) -> FinetuneJob:
    """The fine-tuning job: the pretraining job ``pretraining`` (a config dict; a key that no longer applies is left
    out) without its run-specific keys, ``eval.shards`` set to ``shards`` if given, then ``overrides``
    (``section.key=value``), validated."""
    raw = copy.deepcopy(pretraining)
    raw.pop("export", None)
    for key in RUN_KEYS:
        (raw.get("train") or {}).pop(key, None)
    config = FinetuneJob.from_stored(raw, origin)
    values = ({"eval.shards": shards} if shards else {}) | parse_overrides(overrides)
    config = validate(with_values(config, values, origin))
    config.finetune.schedule()
    return config


def check_labeled(location: str, manifest: Manifest, spec: EncoderSpec) -> None:
    """Labeled shards with train and test splits whose images the encoder of ``spec`` takes."""
    if not manifest.labeled:
        raise ConfigError(
            f"{location} holds unlabeled images; fine-tuning needs labeled shards: pass --shards (or "
            "eval.shards=) a labeled shard set with train and test splits"
        )
    if missing := [split for split in ("train", "test") if split not in manifest.splits]:
        raise ConfigError(f"{location} has no {missing[0]!r} split; fine-tuning trains on train and scores on test")
    if manifest.photos:
        if spec.channels != 3:
            raise ConfigError(f"{location} holds RGB photos; the encoder takes {spec.channels}-channel images")
    elif tuple(manifest.image_shape) != (spec.channels, spec.image_size, spec.image_size):
        raise ConfigError(
            f"{location} holds images of shape {list(manifest.image_shape)}; the encoder takes "
            f"{[spec.channels, spec.image_size, spec.image_size]}: fine-tune on shards of its own data"
        )


def run_config(
    config: FinetuneJob,
    subset: str,
    labeled: str,
    count: int,
    epochs: int,
    name: str,
    manifest: Manifest,
    spec: EncoderSpec,
) -> FinetuneJob:
    """The config one fine-tuning runs under: the subset as ``data.shards`` (at ``finetune.batch_size`` per rank,
    less when a rank's share of the subset is smaller), ``finetune.augment`` views, this fraction's epochs."""
    ranks = config.train.ranks()
    batch = min(config.finetune.batch_size, count // ranks)
    if batch < 1:
        raise ConfigError(
            f"the {count}-image subset is too small for {ranks} Ray Train workers; use a larger "
            "fraction (finetune.fractions) or fewer workers (train.num_workers)"
        )
    return dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data,
            shards=subset,
            url_template=None,
            batch_size=batch,
            mode="exact",
            holdout_class=None,
            normal_class=None,
            image_size=spec.image_size if manifest.photos else None,
        ),
        augment=AugmentConfig(preset=config.finetune.augment),
        train=dataclasses.replace(config.train, epochs=epochs, name=name),
        eval=dataclasses.replace(config.eval, shards=labeled),
    )


@dataclass(frozen=True)
class Source:
    """The encoder fine-tuned: where its export is, its spec and weights, and the MLflow run that pretrained it."""

    model: str
    spec: EncoderSpec
    weights: dict[str, torch.Tensor]
    pretrain_run_id: str | None

    @property
    def lineage(self) -> dict[str, str]:
        return {PRETRAIN_TAG: self.pretrain_run_id} if self.pretrain_run_id else {}


def finetune(model: str, encoder: nn.Module, meta: dict[str, Any], config: FinetuneJob) -> FinetuneSummary:
    """Fine-tune ``encoder`` (the export ``model``, its ``encoder.json`` ``meta``) and a fresh one of its spec at
    every fraction of ``config.finetune``: validate -> tracked run -> fit and evaluate each -> the table on the
    runs."""
    weights = {key: value.detach().cpu() for key, value in encoder.state_dict().items()}
    source = Source(model, EncoderSpec.from_dict(meta["spec"]), weights, meta.get("mlflow_run_id"))
    labeled = storage.absolute(config.evaluation_shards)
    manifest = read_manifest(labeled)
    check_labeled(labeled, manifest, source.spec)
    schedule = config.finetune.schedule()
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, storage_path=storage.absolute(config.train.storage_path))
    )
    pretraining = (meta.get("config") or {}).get("train", {}).get("name") or Path(str(model).rstrip("/")).name
    name = config.train.name or f"finetune-{pretraining}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tracked_run(
        config,
        name,
        entry_point="sslpipe finetune",
        params={"finetune.model": model},
        tags={**source.lineage, "sslpipe.finetune_model": str(model)},
        datasets={"evaluation": labeled},
    ) as run:
        rows = [_fraction(run, source, labeled, manifest, fraction, epochs) for fraction, epochs in schedule]
        run.tracker.log_text(run.id, table(rows), "finetune.md")
        on_pretraining_run = bool(source.pretrain_run_id) and run.tracker.run_exists(source.pretrain_run_id)
        if on_pretraining_run:
            run.tracker.log_metrics(
                source.pretrain_run_id,
                {metric_name(row.fraction, init): row.accuracy[init] for row in rows for init in INITS},
            )
            run.tracker.set_tags(source.pretrain_run_id, {FINETUNE_TAG: run.id})
    return FinetuneSummary(name, rows, run.id, source.pretrain_run_id, on_pretraining_run, run.tracker.uri)


def _fraction(
    run: TrackedRun, source: Source, labeled: str, manifest: Manifest, fraction: float, epochs: int
) -> FinetuneRow:
    """One labeled fraction: its subset written as shards, then the export and a random initialisation each
    fine-tuned in a nested run and scored on the test split."""
    config = run.config
    subset = storage.join(storage.join(config.train.storage_path, run.name), f"labeled-{pct(fraction)}")
    subset_manifest = write_subset(labeled, subset, fraction, config.train.seed, url_template=config.data.url_template)
    count = subset_manifest.split("train").num_samples
    row = FinetuneRow(fraction, count, epochs, {}, {})
    scorer = SplitAccuracy(
        LabeledShards(
            labeled,
            config.eval.batch_size,
            source.spec.image_size if manifest.photos else None,
            config.data.url_template,
            config.data.skip_bad_samples,
            1,
        )
    )
    for init in INITS:
        child = f"{run.name}-{pct(fraction)}-{init}"
        job = run_config(config, subset, labeled, count, epochs, child, manifest, source.spec)
        params = {
            "finetune.fraction": fraction,
            "finetune.init": init,
            "finetune.labels": count,
            "finetune.model": source.model,
        }
        with tracked_run(
            job,
            child,
            entry_point="sslpipe finetune",
            params=params,
            parent_run_id=run.id,
            tags={**source.lineage, FRACTION_TAG: str(fraction), INIT_TAG: init},
            datasets={"training": subset, "evaluation": labeled},
        ) as trained:
            step = Finetuning(source.spec, source.weights if init == "pretrained" else None, (scorer,))
            state = fit(trained.config, child, [trained.epoch_logger()], step)
            trained.after_training(state)
        row.accuracy[init], row.run_ids[init] = state["metrics"]["test_accuracy"], trained.id
    run.tracker.log_metrics(run.id, {metric_name(fraction, init): row.accuracy[init] for init in INITS})
    return row


def table(rows: Sequence[FinetuneRow]) -> str:
    """The results as a Markdown table: fraction, labels, epochs, test accuracy pretrained and from random
    initialisation, and the difference in points."""
    lines = [
        "| labels | images | epochs | pretrained | random init | difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        pretrained, random_init = row.accuracy["pretrained"], row.accuracy["random_init"]
        lines.append(
            f"| {round(row.fraction * 100, 6):g}% | {row.labels:,} | {row.epochs} | {pretrained:.4f} "
            f"| {random_init:.4f} | {100 * (pretrained - random_init):+.1f} points |"
        )
    return "\n".join(lines)


def show(summary: FinetuneSummary) -> None:
    print(table(summary.rows))
    where = (
        "and on the pretraining run " + summary.pretrain_run_id
        if summary.on_pretraining_run
        else ("(the pretraining run is not in this store)")
    )
    print(f"MLflow run      {summary.parent_run_id} ({summary.name}) in {summary.tracking_uri}, {where}")
