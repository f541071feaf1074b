"""``sslpipe anomaly JOB --protocol one-class|leave-one-out``: the two standard anomaly-detection protocols, one
pretraining run per class, run as the trials of a Ray Tune grid (:mod:`pipeline.search.runner`: as many at once as
the cluster holds, each a whole pretraining run with its own MLflow run), then the per-class AUROC of every score
the method supports beside PCA's, as a table (CSV, Markdown) and a plot on the search's MLflow run.

* ``one-class`` (Deep SVDD, GEOM and their successors): ``data.normal_class=c`` pretrains on the training images
  of class ``c`` only; AUROC of the other classes' test images against class ``c``'s.
* ``leave-one-out``: ``data.holdout_class=c`` pretrains on the other classes; AUROC of class ``c`` against them.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.job_config import JobConfig
from pipeline.data import read_manifest
from pipeline.errors import ConfigError
from pipeline.evaluate.plots import anomaly_png
from pipeline.search.runner import Job, record, run_trials, search_run
from pipeline.search.space import SearchConfig
from pipeline.track.run import TrackedRun

PROTOCOLS = {"one-class": "data.normal_class", "leave-one-out": "data.holdout_class"}
SCORES = {
    "anomaly_auroc_knn": "kNN cosine",
    "anomaly_auroc_mahalanobis": "Mahalanobis",
    "anomaly_auroc_recon": "reconstruction",
    "anomaly_auroc_neg_elbo": "-ELBO",
    "pca_anomaly_auroc": "PCA",
}
RANKED_BY = "anomaly_auroc_knn"  # every method has it; the search's "best" class means nothing more here


@dataclass
class AnomalySummary:
    name: str
    protocol: str
    parent_run_id: str
    tracking_uri: str
    scores: list[str]  # the AUROC metrics the method reported, in SCORES order
    rows: list[dict[str, Any]]  # per class: class, name, each score's AUROC (nan: the trial failed), MLflow run id
    mean: dict[str, float]  # each score's mean AUROC over the classes


def classes_to_run(config: JobConfig, classes: Sequence[int] | None) -> list[int]:
    """``classes`` (default: every class of the training shards), each checked to be one of their labels."""
    names = read_manifest(config.data.shards).class_names
    if not names:
        raise ConfigError(
            f"data.shards: {config.data.shards} holds unlabeled images; the anomaly protocols need "
            "labels to choose normal and anomalous classes"
        )
    chosen = list(range(len(names))) if classes is None else list(classes)
    if bad := [c for c in chosen if not 0 <= c < len(names)]:
        raise ConfigError(f"--classes: {bad[0]} is not a label of {config.data.shards} (0-{len(names) - 1})")
    return chosen


def anomaly_search(config: JobConfig, protocol: str, classes: Sequence[int], name: str) -> SearchConfig:
    """A grid over the protocol's class key; no trial stopped early (every class runs all its epochs)."""
    return SearchConfig(
        space={PROTOCOLS[protocol]: {"grid": list(classes)}},
        metric=RANKED_BY,
        early_stop_metric="loss",
        early_stop_mode="min",
        grace_period=config.train.epochs,
        name=name,
    )


def table(summary: AnomalySummary) -> str:
    """The per-class AUROC table and its mean, as Markdown."""
    header = ["class", "name", *(SCORES[score] for score in summary.scores)]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * len(summary.scores)]
    for row in summary.rows:
        lines.append(f"| {row['class']} | {row['name']} | " + " | ".join(_cell(row[s]) for s in summary.scores) + " |")
    lines.append("| mean | | " + " | ".join(f"**{_cell(summary.mean[s])}**" for s in summary.scores) + " |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "failed" if math.isnan(value) else f"{value:.3f}"


def anomaly(
    config: JobConfig, protocol: str, classes: Sequence[int] | None, name: str | None, job: Job
) -> AnomalySummary:
    """Run (or, with the same ``name``, resume) ``protocol`` over ``classes``, each class a run of ``job``
    (pretraining): validate -> the search's tracked run -> a trial per class -> the table of AUROCs -> logged on
    the search's run (``anomaly.csv``, ``anomaly.md``, ``anomaly.png``, metrics ``mean_<score>``)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol: {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if config.data.normal_class is not None or config.data.holdout_class is not None:
        raise ConfigError(
            "data.normal_class / data.holdout_class: the protocol sets them for each class; leave them unset in the job"
        )
    chosen = classes_to_run(config, classes)
    name = name or f"anomaly-{protocol}-{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    search = anomaly_search(config, protocol, chosen, name)
    with search_run(config, search, entry_point="sslpipe anomaly") as run:
        trials = run_trials(run, search, job, report=list(SCORES))
        record(run, search, trials, best=None, register=False)  # no class is "best"
        summary = _summary(run, protocol, chosen, trials)
        _log(run, summary)
    return summary


def _summary(run: TrackedRun, protocol: str, classes: Sequence[int], trials: list[dict[str, Any]]) -> AnomalySummary:
    """Each class's AUROC of every score some trial reported (nan where its trial failed), and their means."""
    class_names = read_manifest(run.config.data.shards).class_names
    by_class = {row[PROTOCOLS[protocol]]: row for row in trials}
    scores = [score for score in SCORES if any(not math.isnan(row[score]) for row in trials)]
    rows = [
        {
            "class": c,
            "name": class_names[c],
            **{s: by_class.get(c, {}).get(s, math.nan) for s in scores},
            "mlflow_run_id": by_class.get(c, {}).get("mlflow_run_id", ""),
        }
        for c in classes
    ]
    mean = {s: math.fsum(row[s] for row in rows) / len(rows) for s in scores}
    return AnomalySummary(run.name, protocol, run.id, run.tracker.uri, scores, rows, mean)


def _log(run: TrackedRun, summary: AnomalySummary) -> None:
    """The table (CSV, Markdown) and its plot on the search's run, the mean AUROCs as metrics, the protocol as a
    tag."""
    tracker, rows = run.tracker, summary.rows
    tracker.log_rows(run.id, rows, "anomaly.csv")
    tracker.log_text(run.id, table(summary) + "\n", "anomaly.md")
    with tempfile.TemporaryDirectory(prefix="sslpipe-anomaly-") as folder:
        tracker.log_artifact(
            run.id,
            anomaly_png(
                rows,
                {s: SCORES[s] for s in summary.scores},
                Path(folder, "anomaly.png"),
                f"{run.config.method.name}, {summary.protocol}: AUROC per class",
            ),
        )
    tracker.log_metrics(run.id, {f"mean_{s}": v for s, v in summary.mean.items() if not math.isnan(v)})
    tracker.set_tags(run.id, {"sslpipe.anomaly_protocol": summary.protocol})


def show(summary: AnomalySummary) -> None:
    print(table(summary))
    print(
        f"MLflow run      {summary.parent_run_id} ({summary.name}) in {summary.tracking_uri}: anomaly.md, "
        "anomaly.png, and one nested run per class"
    )
