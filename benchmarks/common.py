"""Shared benchmark plumbing: interleaved repeats, machine facts, table printing and JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine_info() -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def interleaved(variants: dict[str, Callable[[], int]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant ``warmup + repeats`` times as A, B, C, A, B, C ...; each call returns the number of
    samples it processed. Returns samples/s per measured repeat."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            count = run()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                rates[name].append(count / elapsed)
    return rates


def report(name: str, rates: dict[str, list[float]], baseline: str, extra: dict) -> Path:
    """Print a table of median samples/s and ratios to ``baseline``; write ``results/<name>.json``."""
    medians = {variant: statistics.median(values) for variant, values in rates.items()}
    width = max(len(v) for v in medians)
    print(f"\n{'variant':<{width}}  {'samples/s':>11}  {'vs ' + baseline:>14}")
    for variant, median in medians.items():
        print(f"{variant:<{width}}  {median:>11,.0f}  {median / medians[baseline]:>14.2f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine_info(), "baseline": baseline, "median_samples_per_s": medians, "runs": rates, **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    print(f"\nwrote {path}")
    return path
