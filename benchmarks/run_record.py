"""A finished ``sslpipe pretrain`` run's record as a results file: what it ran (method, encoder, epochs and the
params that name the job) and what it measured (every final metric: probe, kNN, the baselines, the method's own),
read from its MLflow run, so that a run made on the command line lands in the results as it was measured.

    python -m benchmarks.run_record NAME --run-id RUN [--tracking-uri sqlite:///mlflow.db] [--command "sslpipe ..."]

Writes ``benchmarks/results/NAME.json``: the run's start and end (UTC), the command that made it (``--command``,
else the run's entry point), its params and metrics.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from benchmarks.common import command_line, print_table, write_results


def utc(milliseconds: int | None) -> str | None:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds") if milliseconds else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the results file's name")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--command", help="the command that made the run")
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    run = MlflowClient(args.tracking_uri).get_run(args.run_id)
    metrics, params = dict(sorted(run.data.metrics.items())), dict(sorted(run.data.params.items()))
    print_table([{"metric": key, "value": value} for key, value in metrics.items()])
    write_results(
        args.name,
        {
            "command": args.command or run.data.tags.get("sslpipe.entry_point", ""),
            "recorded_by": command_line("benchmarks.run_record", argv),
            "run": {"id": run.info.run_id, "name": run.info.run_name, "status": run.info.status},
            "started": utc(run.info.start_time),
            "ended": utc(run.info.end_time),
            "params": params,
            "metrics": metrics,
        },
    )


if __name__ == "__main__":
    main()
