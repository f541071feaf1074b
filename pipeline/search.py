"""``sslpipe tune``: a Ray Tune search over job-config fields.

Every trial is a whole pretraining run, the same :func:`pipeline.pretrain.pretrain` as ``sslpipe pretrain``
(Ray Train workers, evaluation, MLflow run, export), nested under the search's parent MLflow run. Ray Train's
per-epoch reports reach Tune through ``TuneReportCallback``; ASHA stops weak trials on
``search.early_stop_metric`` (default: ``online_knn_accuracy``, a kNN on a slice of the training split); finished
trials are ranked on ``search.metric`` from the final evaluation (default: ``probe_accuracy``). The parent run
holds the table of trials (CSV and PNG), the best config, and the best trial's encoder as a registered model.
Rerunning a search with the same ``search.name`` restores it: finished trials are not run again.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import cluster
from pipeline.config import JobConfig, TrainConfig, dump_config, validate, with_values, with_workers
from pipeline.data import read_manifest, storage
from pipeline.errors import SslpipeError
from pipeline.evaluate.plots import search_png
from pipeline.export import META, PT2, WEIGHTS, encoder_from_files, example_input, exported_files
from pipeline.pretrain import pretrain, resolve_paths, run_datasets, run_params
from pipeline.search_config import SearchConfig, grid_points, trial_values, tune_space, validate_search
from pipeline.track import Tracker, check_reachable, tracking_uri

DEFAULT_ONLINE_KNN = 5000  # bank size when the early-stop metric is online_knn_accuracy and eval.online_knn is 0
SEARCH_TAG = "sslpipe.search"
TRIAL_MEMORY = 64 << 20  # bytes of Ray's logical memory resource a trial's driver asks for


@dataclass
class SearchSummary:
    name: str
    parent_run_id: str
    tracking_uri: str
    trials: list[dict[str, Any]]  # one row per trial: id, params, status, metrics, MLflow run id
    best: dict[str, Any] | None  # the best finished trial's row
    model_uri: str | None  # the best trial's registered encoder


def run_trial(params: dict[str, Any], *, base: dict, parent_run_id: str, search_name: str) -> None:
    """Tune's function trainable: pretrain ``base`` with ``params`` set, Ray Train's epochs forwarded to Tune,
    then report the final evaluation (with the last epoch's metrics, which ASHA requires in every result)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    config = with_values(JobConfig.from_dict(base), trial_values(params), "search trial")
    # a stable name: a restored trial resumes its own Ray Train checkpoints and MLflow run
    config.train.name = f"{search_name}-{tune.get_context().get_trial_id()}"
    summary = pretrain(config, parent_run_id=parent_run_id, train_callbacks=[TuneReportCallback()], register=False)
    tune.report({**summary.train_metrics, **summary.metrics, "mlflow_run_id": summary.run_id,
                 "export_dir": str(summary.export_dir)})


class SearchError(SslpipeError):
    """No trial of a search finished."""


class SearchInterrupted(SslpipeError):
    """The search was stopped (Ctrl-C, SIGUSR1) before every trial ended; rerunning it resumes."""


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


def _trial_rows(results: Any, search: SearchConfig, tracker: Tracker, name: str, experiment: str,
                report: Sequence[str] = ()) -> list[dict]:
    rows = []
    keys = search.keys()
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
        rows.append({
            "trial": trial_id, **{key: values.get(key) for key in keys}, "status": status,
            search.metric: metrics.get(search.metric, math.nan), early: last_early,
            **{metric: metrics.get(metric, math.nan) for metric in report if metric != search.metric},
            "epochs": int(history["epoch"].max()) + 1 if history is not None and "epoch" in history else 0,
            "mlflow_run_id": run.info.run_id if run is not None else "",
            "export_dir": metrics.get("export_dir", ""),
        })
    return sorted(rows, key=lambda row: row["trial"])  # a stable order: ties go to the earlier trial


def trials_that_fit(train: TrainConfig, resources: Mapping[str, float]) -> int:
    """How many trials run at once: as many as the cluster's CPUs (and, with ``use_gpu``, GPUs) hold, at least 1."""
    fits = resources.get("CPU", 1) // (train.num_workers * train.cpus_per_worker)
    if train.use_gpu:
        fits = min(fits, resources.get("GPU", 0) // train.num_workers)
    return max(1, int(fits))


def run_search(
    config: JobConfig, search: SearchConfig, *, report: Sequence[str] = (), register_best: bool = True,
    entry_point: str = "sslpipe tune",
) -> SearchSummary:
    """Run (or resume) the search; returns its table (with the final metrics named in ``report`` beside
    ``search.metric``), best trial and, with ``register_best``, its registered encoder. ``entry_point`` is the
    parent MLflow run's source."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    name = search.name or f"search-{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = resolve_paths(config, name)
    manifest = read_manifest(config.data.shards)
    validate_search(validate(config, manifest), search, manifest)  # fail here, not in every trial
    tracker = Tracker(check_reachable(tracking_uri(config.track)))
    config = with_workers(config, cluster.resources())  # starts or joins Ray; every trial gets this many
    online_knn = config.eval.online_knn
    if search.early_stop_metric == "online_knn_accuracy" and online_knn <= 0:
        online_knn = DEFAULT_ONLINE_KNN
    config = dataclasses.replace(
        config, track=dataclasses.replace(config.track, tracking_uri=tracker.uri),  # trials run in other folders
        eval=dataclasses.replace(config.eval, online_knn=online_knn),
    )
    params = run_params(config, manifest)
    if "method" in search.space:  # the trials' methods come from the branches, not from the base job
        params = {key: value for key, value in params.items() if not key.startswith("method.")}
    parent = tracker.start(config.track.experiment, name, params, dump_config(config), reuse_finished=True,
                           tags={SEARCH_TAG: "parent"}, entry_point=entry_point,
                           datasets=run_datasets(config, manifest))
    tracker.log_text(parent, yaml.safe_dump(dataclasses.asdict(search), sort_keys=False), "search.yaml")

    concurrent = search.max_concurrent_trials or trials_that_fit(config.train, cluster.resources())
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=config.to_dict(), parent_run_id=parent, search_name=name),
        # the trial only drives; its Ray Train workers ask for their own CPUs. Not even 0.01 CPU: 2 workers of
        # 1 CPU must still fit a 2-CPU machine. (Tune refuses an empty request, so it asks for a little memory.)
        {"memory": TRIAL_MEMORY},
    )
    experiment = storage.join(config.train.storage_path, name)
    if tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, restart_errored=True)
    else:
        scheduler = None  # grace_period >= epochs: no trial is stopped early
        if search.grace_period < config.train.epochs:
            scheduler = ASHAScheduler(
                time_attr="training_iteration", metric=search.early_stop_metric, mode=search.early_stop_mode,
                max_t=config.train.epochs + 1,  # the final evaluation is report epochs + 1; a stop there is moot
                grace_period=search.grace_period, reduction_factor=search.reduction_factor,
            )
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(search.space),
            tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=search.num_samples,
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=name, storage_path=config.train.storage_path),
        )
    try:
        results = tuner.fit()
        unfinished = _unfinished_trials(experiment, search)
        if unfinished:  # Ctrl-C or SIGUSR1: Tune saved its state and returned
            raise SearchInterrupted(
                f"search {name!r} stopped with {unfinished} trials unfinished; run the same command again to resume it"
            )
        rows = _trial_rows(results, search, tracker, name, config.track.experiment, report)
        finished = [r for r in rows if r["status"] == "finished" and not math.isnan(r[search.metric])]
        errors = [result.error for result in results if result.error is not None]
        if errors and not finished:
            raise SearchError(f"all {len(rows)} trials failed; the first: {_one_line(errors[0])}")
        best = (max if search.mode == "max" else min)(finished, key=lambda r: r[search.metric], default=None)
        with tempfile.TemporaryDirectory(prefix="sslpipe-search-") as folder:
            with open(Path(folder, "trials.csv"), "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
                writer.writeheader()
                writer.writerows(rows)
            tracker.log_artifact(parent, Path(folder, "trials.csv"))
            tracker.log_artifact(parent, search_png(rows, search.keys(), search.log_keys(), search.metric,
                                                    search.early_stop_metric, Path(folder, "search.png")))
        model_uri = None
        if best is not None and register_best:
            tags = tracker.tags(parent)
            if tags.get("sslpipe.best_run_id") == best["mlflow_run_id"]:  # a restored search: registered before
                model_uri = tags["sslpipe.best_model"]
            else:
                files = exported_files(best["export_dir"], (PT2, WEIGHTS, META))
                _, spec = encoder_from_files(files, best["export_dir"])
                model_uri = tracker.log_encoder(best["mlflow_run_id"], files.pop(PT2), example_input(spec), files,
                                                config.track.registered_model)
        if best is not None:
            tracker.log_metrics(parent, {f"best_{search.metric}": best[search.metric]})
            best_params = {key: best[key] for key in search.keys() if best[key] is not None}
            tracker.log_text(parent, yaml.safe_dump(best_params), "best_params.yaml")
            tracker.set_tags(parent, {"sslpipe.best_run_id": best["mlflow_run_id"], "sslpipe.best_trial": best["trial"],
                                      **({"sslpipe.best_model": model_uri} if model_uri else {})})
        tracker.log_metrics(parent, {"trials": len(rows), "trials_stopped_early": sum(
            r["status"] == "stopped early" for r in rows)})
    except SearchInterrupted:
        for run in tracker.children(config.track.experiment, parent):
            if run.info.status == "RUNNING":  # a rerun resumes it
                tracker.finish(run.info.run_id, "KILLED")
        tracker.finish(parent, "KILLED")
        raise
    except BaseException:
        tracker.finish(parent, "FAILED")
        raise
    tracker.finish(parent)
    return SearchSummary(name, parent, tracker.uri, rows, best, model_uri)
