"""Search files: a job config (or a ``search.base`` job file it refines) plus a ``search`` section saying which
config fields to vary and how trials are judged and stopped.

```yaml
search:
  base: simclr_fashion_mnist.yaml        # relative to this file
  space:
    method.temperature: {grid: [0.1, 0.5]}
    optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
  num_samples: 2
train:
  epochs: 2                              # job sections here override the base
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, _build_section, apply_overrides, read_yaml, with_values
from pipeline.errors import ConfigError

LISTS = ("grid", "choice")  # {grid: [a, b]}: every value (times num_samples); {choice: [a, b]}: sampled
RANGES = ("uniform", "loguniform", "randint")  # {uniform: [low, high]}, randint's high excluded
MODES = ("max", "min")


@dataclass
class SearchConfig:
    base: str | None = None  # job file the search starts from, relative to the search file
    space: dict[str, dict[str, list]] = field(default_factory=dict)  # "section.key": {kind: values}
    num_samples: int = 1  # draws of the space (a grid runs num_samples times per point)
    metric: str = "probe_accuracy"  # ranks trials; from the final evaluation
    mode: str = "max"
    early_stop_metric: str = "online_knn_accuracy"  # ASHA's metric, reported every epoch
    early_stop_mode: str = "max"
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it; >= train.epochs: never stopped
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor at each rung
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs hold (train.num_workers * cpus_per_worker)
    name: str | None = None  # rerunning a search of this name resumes it


def _check_space(space: Any, config: JobConfig) -> dict[str, dict[str, list]]:
    if not isinstance(space, dict) or not space:
        raise ConfigError("search.space: expected a mapping of config keys to e.g. {grid: [0.1, 0.5]}")
    for key, spec in space.items():
        where = f"search.space.{key}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in LISTS + RANGES:
            raise ConfigError(f"{where}: expected one of {', '.join(f'{{{k}: [...]}}' for k in LISTS + RANGES)}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
        if kind in RANGES:
            if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
                raise ConfigError(f"{where}.{kind}: expected [low, high] with low < high, got {values}")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"{where}.loguniform: low must be > 0, got {values[0]}")
            values = [values[0]] if kind == "randint" else values  # randint's high is excluded
        for value in values:
            with_values(config, {key: value}, where)  # unknown key or a value of the wrong type fails here
    return space


def load_search(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[JobConfig, SearchConfig]:
    """The trials' base job config and the search section of search file ``path``; ``overrides`` are
    ``section.key=value`` for job sections or ``search``."""
    raw = apply_overrides(read_yaml(path), overrides)
    search_raw = raw.pop("search", None)
    if not isinstance(search_raw, dict):
        raise ConfigError(f"{path}: a search file needs a `search` section with at least `space`")
    space = search_raw.pop("space", None)
    search = _build_section(SearchConfig, search_raw, f"{path}: search")
    job = {}
    if search.base:
        job = read_yaml(Path(path).parent / search.base)
    for section, values in raw.items():
        job[section] = {**(job.get(section) or {}), **(values or {})} if isinstance(values, dict) else values
    config = JobConfig.from_dict(job, str(path))
    search.space = _check_space(space, config)
    for name, allowed in (("mode", MODES), ("early_stop_mode", MODES)):
        if getattr(search, name) not in allowed:
            raise ConfigError(f"{path}: search.{name}: {getattr(search, name)!r}; choose max or min")
    for name in ("grace_period", "reduction_factor", "num_samples"):
        if getattr(search, name) < 1 + (name == "reduction_factor"):
            raise ConfigError(f"{path}: search.{name} must be >= {1 + (name == 'reduction_factor')}")
    return config, search


def tune_space(space: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Ray Tune's ``param_space`` for a checked space."""
    from ray import tune

    makers = {"grid": tune.grid_search, "choice": tune.choice}
    ranges = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    return {
        key: makers[kind](values) if kind in makers else ranges[kind](*values)
        for key, spec in space.items() for kind, values in spec.items()
    }


def is_log_scale(spec: dict[str, list]) -> bool:
    """Whether a parameter is best plotted on a log axis (loguniform, or positive values spanning 10x)."""
    kind, values = next(iter(spec.items()))
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return kind == "loguniform" or (len(numbers) == len(values) and min(numbers) > 0
                                    and math.log10(max(numbers) / min(numbers)) >= 1)

