"""Shared benchmark plumbing: interleaved repeats, RSS sampling, machine facts, tables and JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Self
from unittest import mock

import psutil
import torch

from pipeline import storage
from pipeline.train.amp import native_bf16

RESULTS = Path(__file__).parent / "results"
MACHINE_KIND = ("cpu", "cpus", "native_bf16", "torch", "cuda")  # what results added to a file must share
MIB = 1 << 20
WARMUP_FRACTION = 0.25  # of an RSS series: where "after warm-up" is read


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` where there is no /proc/cpuinfo)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor()


def commit() -> str | None:
    """The checkout's commit (``+`` when it has uncommitted changes), or None outside a git checkout."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, check=True)
        return run.stdout.decode().strip()

    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain", "-uno") else "")
    return None


def machine_info() -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def timed(run: Callable[[], int]) -> Callable[[], float]:
    """``run`` (which returns the number of samples it processed) as a call returning samples/s of wall time."""

    def rate() -> float:
        start = time.perf_counter()
        count = run()
        return count / (time.perf_counter() - start)

    return rate


def interleaved(variants: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant ``warmup + repeats`` times as A, B, C, A, B, C ...; each call returns its samples/s
    (``timed`` makes such a call of one that returns a count). Returns the measured repeats' samples/s."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeats):
        for name, run in variants.items():
            rate = run()
            if round_ >= warmup:
                rates[name].append(rate)
    return rates


def medians(rates: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in rates.items()}


def footprint(process: psutil.Process) -> int:
    """Bytes of ``process`` and its descendants (e.g. DataLoader workers): its RSS plus each descendant's USS, the
    memory unique to it (forked workers share most pages with their parent: summing RSS would count those again);
    0 once it is gone."""
    try:
        total, children = process.memory_info().rss, process.children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            total += child.memory_full_info().uss
    return total


def rss_summary(samples: Sequence[int], warmup_fraction: float = WARMUP_FRACTION) -> dict[str, float]:
    """MiB of one series of samples: ``after_warmup``, the largest in the tenth of the series from ``warmup_fraction``
    of the way through; ``end``, the largest in its last tenth (the largest: DataLoader workers come and go at
    epoch boundaries); ``peak``; and ``growth = end - after_warmup``."""
    tenth = max(1, len(samples) // 10)
    start = int(warmup_fraction * len(samples))
    after_warmup, end = max(samples[start : start + tenth]) / MIB, max(samples[-tenth:]) / MIB
    return {"after_warmup": after_warmup, "end": end, "peak": max(samples) / MIB, "growth": end - after_warmup}


class RssSampler:
    """``with RssSampler(roots) as sampler: ...`` samples in a thread, every ``interval`` s, the memory
    (``measure``, default :func:`footprint`) of each process that ``roots()`` names as ``{label: process}`` (asked
    anew at every sample: processes may come and go). ``sampler.series[label]`` holds the bytes sampled while that
    process lived."""

    def __init__(
        self,
        roots: Callable[[], dict[str, psutil.Process]],
        interval: float = 0.5,
        measure: Callable[[psutil.Process], int] = footprint,
    ) -> None:
        self.roots, self.interval, self.measure = roots, interval, measure
        self.series: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for label, process in self.roots().items():
                if used := self.measure(process):
                    self.series.setdefault(label, []).append(used)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, warmup_fraction: float = WARMUP_FRACTION) -> dict[str, dict[str, float]]:
        return {label: rss_summary(samples, warmup_fraction) for label, samples in self.series.items()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_ray(cpus: int) -> Iterator[None]:
    """A local Ray instance of its own with ``cpus`` CPUs for the block, shut down after it (never ``ray stop``).

    Ray Train's placement-group cleaner asks the state API whether our controller still lives; left to find a
    cluster itself it may ask another Ray on this machine (the latest ``ray start``, or whoever serves the default
    dashboard port), which answers no and gets our workers' placement group removed mid-run. So our processes
    inherit ``RAY_ADDRESS`` naming our GCS, and the dashboard address it records is a free port: the cleaner's
    question then goes unanswered, as on a machine with one Ray, and it keeps waiting."""
    import ray

    gcs, dashboard = free_port(), free_port()
    own = {"RAY_GCS_SERVER_PORT": str(gcs), "RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{gcs}"}
    with mock.patch.dict(os.environ, own):
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            dashboard_port=dashboard,
            configure_logging=False,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
    return "" if value is None else str(value)


def print_table(rows: Sequence[dict[str, object]]) -> None:
    """Print ``rows`` (dicts keyed by column name; the first row's keys give the columns) as an aligned text
    table: the first column left-aligned, the rest right-aligned; floats >= 100 rounded with thousands separators,
    smaller ones to 4 significant digits; missing values blank."""
    columns = list(rows[0])
    cells = [columns, *([_cell(row.get(column)) for column in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    print()
    for line in cells:
        print(
            "  ".join(
                text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def results_name(base: str, overrides: Sequence[str]) -> str:
    """``base`` followed by each ``section.key=value`` override made safe for a file name, joined by ``-``."""
    return "-".join([base, *(re.sub(r"[^\w.=,-]", "_", override) for override in overrides)])


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The shell command that runs ``python -m <module>`` with ``argv`` (default: this process's arguments)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def results_to_extend(name: str, fields: dict[str, object], ignore: Collection[str] = ()) -> dict:
    """The payload of ``results/<name>.json``, for a run given ``--add`` to extend with rows of its own, once checked:
    measured on this kind of machine (``MACHINE_KIND``, where the file records it) and with the same ``fields`` (top-
    level keys of the file; a dict's keys compared one by one, but for those in ``ignore``). Exits with one line
    naming the file and the first thing that differs."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path}: no results to add to; run once without --add")
    old, mine = json.loads(path.read_text()), machine_info()
    pairs = {f"machine.{key}": (old["machine"][key], mine[key]) for key in MACHINE_KIND if key in old["machine"]}
    for key, value in fields.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = (set(before) | set(value)) - set(ignore)
            pairs |= {f"{key}.{k}": (before.get(k), value.get(k)) for k in sorted(inner)}
        else:
            pairs[key] = (before, value)
    for key, (before, now) in pairs.items():
        if before != now:
            raise SystemExit(f"{path}: {key} was {before!r}, this run's is {now!r}; --add extends the same measurement")
    return old


def write_results(name: str, payload: dict) -> Path:
    """``payload`` with ``machine_info()`` as ``results/<name>.json`` (written atomically)."""
    path = RESULTS / f"{name}.json"
    with storage.atomic_writer(RESULTS, path.name) as handle:
        handle.write(json.dumps({"machine": machine_info(), **payload}, indent=2).encode())
    print(f"\nwrote {path}")
    return path


def report(name: str, rates: dict[str, list[float]], baseline: str, extra: dict) -> Path:
    """Print a table of median samples/s and ratios to ``baseline``; write ``results/<name>.json``."""
    median = medians(rates)
    print_table([{"variant": v, "samples/s": m, f"vs {baseline}": m / median[baseline]} for v, m in median.items()])
    return write_results(name, {"baseline": baseline, "median_samples_per_s": median, "runs": rates, **extra})
