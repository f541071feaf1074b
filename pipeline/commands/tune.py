"""``sslpipe tune``: a Ray Tune search over job-config fields, each trial a whole pretraining run; the table of
trials, the best trial and its registered encoder on the search's MLflow run (:mod:`pipeline.search.runner`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config.job_config import JobConfig
from pipeline.search.runner import Job, best_trial, record, run_trials, search_run
from pipeline.search.space import SearchConfig


@dataclass
class SearchSummary:
    name: str
    parent_run_id: str
    tracking_uri: str
    trials: list[dict[str, Any]]  # one row per trial: id, params, status, metrics, MLflow run id
    best: dict[str, Any] | None  # the best finished trial's row
    model_uri: str | None  # the best trial's registered encoder


def tune(config: JobConfig, search: SearchConfig, job: Job) -> SearchSummary:
    """Run (or, with the same ``search.name``, resume) ``search`` over ``config``, each trial a run of ``job``
    (``sslpipe`` hands it pretraining): validate -> the search's tracked run -> the trials -> the best -> its
    encoder registered."""
    with search_run(config, search, entry_point="sslpipe tune") as run:
        rows = run_trials(run, search, job)
        best = best_trial(rows, search)
        model_uri = record(run, search, rows, best, register=True)
    return SearchSummary(run.name, run.id, run.tracker.uri, rows, best, model_uri)


def show(summary: SearchSummary) -> None:
    keys = [k for k in (summary.trials[0] if summary.trials else {}) if k not in ("export_dir",)]
    print("  ".join(f"{k:>14}" for k in keys))
    for row in summary.trials:
        print("  ".join(f"{row[k]:>14.4f}" if isinstance(row[k], float) else f"{row[k]!s:>14}" for k in keys))
    if summary.best:
        print(f"best trial      {summary.best['trial']} (MLflow run {summary.best['mlflow_run_id']})")
        print(f"encoder model   {summary.model_uri}")
    print(f"MLflow run      {summary.parent_run_id} ({summary.name}) in {summary.tracking_uri}")
