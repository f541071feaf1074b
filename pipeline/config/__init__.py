"""The job: its sections and the one rule for which keys apply (``job_config``), the one check before anything
runs (``validation``), and job files read into checked jobs (``files``)."""

from pipeline.config.files import load_config, parse_overrides, read_yaml
from pipeline.config.job_config import (
    CPU_WORKERS,
    FinetuneJob,
    JobConfig,
    applies,
    dump_config,
    flatten,
    reference,
    with_values,
    with_workers,
)
from pipeline.config.validation import check_run_name, validate

__all__ = [
    "CPU_WORKERS",
    "FinetuneJob",
    "JobConfig",
    "applies",
    "check_run_name",
    "dump_config",
    "flatten",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "reference",
    "validate",
    "with_values",
    "with_workers",
]
