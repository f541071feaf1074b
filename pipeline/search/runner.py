"""Ray Tune searches over job-config fields, the library that ``sslpipe tune`` and ``sslpipe anomaly`` compose:
the search's tracked run (:func:`search_run`), its trials (:func:`run_trials`), the best of them
(:func:`best_trial`) and the record on the parent run (:func:`record`).

Every trial is a whole run of the job the command hands in (pretraining: Ray Train workers, evaluation, MLflow
run, export), nested under the search's parent MLflow run. Ray Train's per-epoch reports reach Tune through
``TuneReportCallback``; ASHA stops weak trials on ``search.early_stop_metric`` (default: ``online_knn_accuracy``, a
kNN on a slice of the training split); finished trials are ranked on ``search.metric`` from the final evaluation
(default: ``probe_accuracy``). The parent run holds the table of trials (CSV and PNG), the best config, and the best
trial's encoder as a registered model. Rerunning a search with the same ``search.name`` restores it: finished
trials are not run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline import cluster, storage
from pipeline.config.job_config import JobConfig, with_values
from pipeline.config.validation import check_shared, validate
from pipeline.data import read_manifest
from pipeline.errors import RunStopped, SslpipeError
from pipeline.evaluate.plots import search_png
from pipeline.export import model_parts
from pipeline.job import evaluation_plan, resolve_paths
from pipeline.search.space import SearchConfig, grid_points, trial_values, tune_space, validate_search
from pipeline.sections import TrainConfig
from pipeline.track import Tracker
from pipeline.track.run import TrackedRun, tracked_run

DEFAULT_ONLINE_KNN = 5000  # bank size when the early-stop metric is online_knn_accuracy and eval.online_knn is 0
SEARCH_TAG = "sslpipe.search"
TRIAL_MEMORY = 64 << 20  # bytes of Ray's logical memory resource a trial's driver asks for
NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"  # Tune's switch between its output engines
Job = Callable[..., Any]  # (config, *, parent_run_id, train_callbacks, register) -> a run's summary (pretrain's)


def run_trial(params: dict[str, Any], *, base: dict, parent_run_id: str, search_name: str, job: Job) -> None:
    """Tune's function trainable: ``job`` on ``base`` with ``params`` set, Ray Train's epochs forwarded to Tune,
    then the final evaluation reported (with the last epoch's metrics, which ASHA requires in every result)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    config = with_values(JobConfig.from_stored(base, "search trial"), trial_values(params), "search trial")
    # a stable name: a restored trial resumes its own Ray Train checkpoints and MLflow run
    config.train.name = f"{search_name}-{tune.get_context().get_trial_id()}"
    epochs_to_tune = EpochsToTune() if config.train.num_workers == 0 else TuneReportCallback()
    with contextlib.redirect_stdout(io.StringIO()):  # its evaluation's phases: the search prints a line a report
        summary = job(config, parent_run_id=parent_run_id, train_callbacks=[epochs_to_tune], register=False)
    tune.report(
        {
            **summary.train_metrics,
            **summary.metrics,
            "mlflow_run_id": summary.run_id,
            "export_dir": str(summary.export_dir),
        }
    )


class EpochsToTune:
    """Ray Train's ``TuneReportCallback`` for a trial that trains in its own process (``train.num_workers: 0``):
    each epoch's report (rank 0's) goes to Tune from the trial's thread."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from ray import tune

        tune.report(metrics[0])


class SearchError(SslpipeError):
    """No trial of a search finished."""


def _one_line(error: BaseException) -> str:
    """A trial's own error (Tune wraps it) as one line."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def _unfinished_trials(experiment: str, search: SearchConfig) -> int:
    """Trials of the space not yet ended, from the experiment state Tune saved (also the trials it never created)."""
    from ray.tune import ExperimentAnalysis

    expected = search.num_samples * grid_points(search.space)
    ended = sum(trial.status in ("TERMINATED", "ERROR") for trial in ExperimentAnalysis(experiment).trials)
    return max(0, expected - ended)


def _trial_rows(
    results: Any, search: SearchConfig, tracker: Tracker, name: str, experiment: str, report: Sequence[str] = ()
) -> list[dict]:
    rows = []
    keys = search.varied_keys()
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        early = search.early_stop_metric
        last_early = history[early].dropna().iloc[-1] if history is not None and early in history else math.nan
        run = tracker.find_run(experiment, f"{name}-{trial_id}")
        if result.error is not None:
            status = "error"
        elif search.metric in metrics:
            status = "finished"
        else:
            status = "stopped early"
        wanted = {"error": "FAILED", "stopped early": "KILLED"}.get(status)  # a trial leaves these RUNNING
        if run is not None and wanted and run.info.status != wanted:
            tracker.finish(run.info.run_id, wanted)
        values = trial_values(result.config)
        rows.append(
            {
                "trial": trial_id,
                **{key: values.get(key) for key in keys},
                "status": status,
                search.metric: metrics.get(search.metric, math.nan),
                early: last_early,
                **{metric: metrics.get(metric, math.nan) for metric in report if metric != search.metric},
                "epochs": int(history["epoch"].max()) + 1 if history is not None and "epoch" in history else 0,
                "mlflow_run_id": run.info.run_id if run is not None else "",
                "export_dir": metrics.get("export_dir", ""),
            }
        )
    return sorted(rows, key=lambda row: row["trial"])  # a stable order: ties go to the earlier trial


def trials_that_fit(train: TrainConfig, resources: Mapping[str, float]) -> int:
    """How many trials run at once: as many as the cluster's CPUs (and, with ``use_gpu``, GPUs) hold, at least 1."""
    fits = resources.get("CPU", 1) // (train.ranks() * train.cpus_per_worker)
    if train.use_gpu:
        fits = min(fits, resources.get("GPU", 0) // train.ranks())
    return max(1, int(fits))


@contextlib.contextmanager
def search_run(config: JobConfig, search: SearchConfig, entry_point: str) -> Iterator[TrackedRun]:
    """The search's parent MLflow run (``search.name``, else one made of the method and time) for the block, once
    ``config`` and every value of the space are valid for its shards (Ray not started yet); its ``config`` is the
    job every trial starts from, with ``search.yaml`` logged. ``entry_point`` is the run's source."""
    name = search.name or f"search-{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = resolve_paths(config, name)
    manifest = read_manifest(config.data.shards)
    validate_search(validate(config, manifest), search, manifest)  # fail here, not in every trial
    config = _trials_base(config, search)
    datasets = {"training": config.data.shards, "evaluation": config.evaluation_shards}
    with tracked_run(
        config,
        name,
        entry_point=entry_point,
        params=evaluation_plan(config, manifest).params(),
        datasets=datasets,
        omit=("method",) if "method" in search.space else (),  # the trials' methods: from the branches
        tags={SEARCH_TAG: "parent"},
        reuse_finished=True,
        resume_key="search.name",
    ) as run:
        run.tracker.log_text(run.id, yaml.safe_dump(dataclasses.asdict(search), sort_keys=False), "search.yaml")
        yield run


def run_trials(run: TrackedRun, search: SearchConfig, job: Job, report: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run (or resume) the trials of ``search`` under ``run``, each a run of ``job``; returns one row per trial
    (with the final metrics named in ``report`` beside ``search.metric``). Raises when every trial failed."""
    with _classic_tune_output():  # its new output engine prints the experiment's setup whatever the verbosity
        results = _tuner(run, search, job).fit()
    experiment = storage.join(run.config.train.storage_path, run.name)
    if unfinished := _unfinished_trials(experiment, search):  # Ctrl-C or SIGUSR1: Tune saved its state and returned
        for child in run.tracker.children(run.config.track.experiment, run.id):
            if child.info.status == "RUNNING":  # a rerun resumes it
                run.tracker.finish(child.info.run_id, "KILLED")
        raise RunStopped(f"stopped with {unfinished} trials unfinished")
    rows = _trial_rows(results, search, run.tracker, run.name, run.config.track.experiment, report)
    errors = [result.error for result in results if result.error is not None]
    if errors and not _finished(rows, search):
        raise SearchError(f"all {len(rows)} trials failed; the first: {_one_line(errors[0])}")
    return rows


@contextlib.contextmanager
def _classic_tune_output() -> Iterator[None]:
    """For the block, Tune's classic output engine, which at verbosity 0 prints nothing of its own."""
    previous = os.environ.get(NEW_OUTPUT)
    os.environ[NEW_OUTPUT] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[NEW_OUTPUT]
        else:
            os.environ[NEW_OUTPUT] = previous


def _finished(rows: list[dict[str, Any]], search: SearchConfig) -> list[dict[str, Any]]:
    return [row for row in rows if row["status"] == "finished" and not math.isnan(row[search.metric])]


def best_trial(rows: list[dict[str, Any]], search: SearchConfig) -> dict[str, Any] | None:
    """The finished trial that ranks first on ``search.metric`` (ties: the earlier trial)."""
    return (max if search.mode == "max" else min)(_finished(rows, search), key=lambda r: r[search.metric], default=None)


def _trials_base(config: JobConfig, search: SearchConfig) -> JobConfig:
    """The job every trial starts from: the tracking store's URI made absolute (trials run in other folders), and
    an online kNN bank when the early-stop metric needs one."""
    online_knn = config.eval.online_knn
    if search.early_stop_metric == "online_knn_accuracy" and online_knn <= 0:
        online_knn = DEFAULT_ONLINE_KNN
    return dataclasses.replace(
        config,
        track=dataclasses.replace(config.track, tracking_uri=config.track.store()),
        eval=dataclasses.replace(config.eval, online_knn=online_knn),
    )


def _tuner(run: TrackedRun, search: SearchConfig, job: Job) -> Any:
    """Tune's tuner for the search: restored where its experiment was saved, else a new one with ASHA unless no
    trial may stop early."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipeline.search.trial_lines import TrialLines

    config = run.config
    check_shared(config, cluster.alive_nodes(), exports_anywhere=True)  # trials export where they run
    concurrent = search.max_concurrent_trials or trials_that_fit(config.train, cluster.resources())
    # the trial only drives; its Ray Train workers ask for their own CPUs. Not even 0.01 CPU: 2 workers of 1 CPU must
    # still fit a 2-CPU machine. (Tune refuses an empty request, so it asks for a little memory.) A trial that
    # trains in its own process asks for what a worker would.
    resources = {"memory": TRIAL_MEMORY}
    if config.train.num_workers == 0:
        resources = {"CPU": config.train.cpus_per_worker, **({"GPU": 1} if config.train.use_gpu else {})}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=config.to_dict(), parent_run_id=run.id, search_name=run.name, job=job),
        resources,
    )
    experiment = storage.join(config.train.storage_path, run.name)
    if tune.Tuner.can_restore(experiment):
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, restart_errored=True)
    scheduler = None  # grace_period >= epochs: no trial is stopped early
    if search.grace_period < config.train.epochs:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=search.early_stop_metric,
            mode=search.early_stop_mode,
            max_t=config.train.epochs + 1,  # the final evaluation is report epochs + 1; a stop there is moot
            grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=tune_space(search.space),
        tune_config=tune.TuneConfig(
            scheduler=scheduler, num_samples=search.num_samples, max_concurrent_trials=concurrent
        ),
        # one line per trial report instead of Tune's tables (verbose=0 silences those)
        run_config=tune.RunConfig(
            name=run.name,
            storage_path=config.train.storage_path,
            verbose=0,
            callbacks=[TrialLines(search, config.train.epochs)],
        ),
    )


def record(run: TrackedRun, search: SearchConfig, rows: list[dict], best: dict | None, register: bool) -> str | None:
    """The table of trials (CSV, PNG), the best trial's params, metric and tags on the parent run, and, with
    ``register``, the best encoder registered (once: a restored search keeps its registration); returns the
    registered model's URI."""
    tracker, parent = run.tracker, run.id
    tracker.log_rows(parent, rows, "trials.csv")
    with tempfile.TemporaryDirectory(prefix="sslpipe-search-") as folder:
        tracker.log_artifact(
            parent,
            search_png(
                rows,
                search.varied_keys(),
                search.log_keys(),
                search.metric,
                search.early_stop_metric,
                Path(folder, "search.png"),
            ),
        )
    model_uri = None
    if best is not None and register:
        tags = tracker.tags(parent)
        if tags.get("sslpipe.best_run_id") == best["mlflow_run_id"]:  # a restored search: registered before
            model_uri = tags["sslpipe.best_model"]
        else:
            model_uri = tracker.log_encoder(
                best["mlflow_run_id"], *model_parts(best["export_dir"]), run.config.track.registered_model
            )
    if best is not None:
        tracker.log_metrics(parent, {f"best_{search.metric}": best[search.metric]})
        best_params = {key: best[key] for key in search.varied_keys() if best[key] is not None}
        tracker.log_text(parent, yaml.safe_dump(best_params), "best_params.yaml")
        tracker.set_tags(
            parent,
            {
                "sslpipe.best_run_id": best["mlflow_run_id"],
                "sslpipe.best_trial": best["trial"],
                **({"sslpipe.best_model": model_uri} if model_uri else {}),
            },
        )
    tracker.log_metrics(
        parent, {"trials": len(rows), "trials_stopped_early": sum(r["status"] == "stopped early" for r in rows)}
    )
    return model_uri
