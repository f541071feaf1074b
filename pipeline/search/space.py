"""Search files: a job config (or a ``search.base`` job file it refines) plus a ``search`` section saying which
config keys to vary and how trials are judged and stopped.

```yaml
search:
  base: simclr_fashion_mnist.yaml        # relative to this file
  space:
    optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
    method:                              # varies the method: a grid over its branches; each trial takes only
      simclr:                            # its own method's options, and its branch's other keys
        method.temperature: {grid: [0.1, 0.5]}
      byol:
        augment.preset: light            # a plain value: fixed for this branch's trials
  num_samples: 2
train:
  epochs: 2                              # job sections here override the base
```

Without a ``method`` entry every trial runs the base job's method, and ``method.*`` keys in the space must be its
options. Every value a space can take is checked against the job (key, type, limits, ``validate``) before Ray
starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge

from pipeline import options
from pipeline.config.files import parse_overrides, read_yaml
from pipeline.config.job_config import JobConfig, flatten, with_values
from pipeline.config.validation import check_run_name, validate
from pipeline.data.manifest import Manifest
from pipeline.errors import ConfigError
from pipeline.methods import METHODS

LISTS = ("grid", "choice")  # {grid: [a, b]}: every value (times num_samples); {choice: [a, b]}: sampled
RANGES = ("uniform", "loguniform", "randint")  # {uniform: [low, high]}, randint's high excluded
BRANCHES = "method"  # the space's key whose value maps method names to their branches
Mode = Literal["max", "min"]


@dataclass
class SearchConfig:
    base: Annotated[str | None, "job file the search starts from, relative to the search file"] = None
    space: Annotated[dict, "config key -> {kind: values}; `method` -> one branch per method"] = field(
        default_factory=dict
    )
    num_samples: Annotated[int, Ge(1), "draws of the space (a grid runs num_samples times per point)"] = 1
    metric: Annotated[str, "ranks trials; from the final evaluation"] = "probe_accuracy"
    mode: Annotated[Mode, "whether a larger metric is better"] = "max"
    early_stop_metric: Annotated[str, "ASHA's metric, reported every epoch"] = "online_knn_accuracy"
    early_stop_mode: Annotated[Mode, "whether a larger early-stop metric is better"] = "max"
    grace_period: Annotated[
        int, Ge(1), "epochs every trial runs before ASHA may stop it; >= train.epochs: never stopped"
    ] = 1
    reduction_factor: Annotated[int, Ge(2), "ASHA keeps the best 1/reduction_factor at each rung"] = 2
    max_concurrent_trials: Annotated[int, Ge(0), "0: as many as the cluster's CPUs hold"] = 0
    name: Annotated[str | None, "rerunning a search of this name resumes it"] = None

    def varied_keys(self) -> list[str]:
        """Every config key the trials vary, in order: the space's, then ``method.name`` and the branches'."""
        return list(dict.fromkeys(key for key, _ in _entries(self.space)))

    def log_keys(self) -> set[str]:
        """Keys best plotted on a log axis (loguniform, or positive values spanning 10x)."""
        return {key for key, spec in _entries(self.space) if _is_spec(spec) and is_log_scale(spec)}


def _entries(space: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(key, spec or fixed value)`` of the space, the branches' flattened after ``method.name``."""
    entries = [(key, spec) for key, spec in space.items() if key != BRANCHES]
    if BRANCHES in space:
        entries.append(("method.name", {"grid": list(space[BRANCHES])}))
        entries += [(key, spec) for branch in space[BRANCHES].values() for key, spec in (branch or {}).items()]
    return entries


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in LISTS + RANGES


def _values(key: str, spec: Any, where: str) -> list:
    """The values to check of ``spec`` (a range's ends, a list's members), its form checked."""
    if not _is_spec(spec):
        raise ConfigError(f"{where}: expected one of {', '.join(f'{{{k}: [...]}}' for k in LISTS + RANGES)}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if kind in RANGES:
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
            raise ConfigError(f"{where}.{kind}: expected [low, high] with low < high, got {values}")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}.loguniform: low must be > 0, got {values[0]}")
        return [values[0]] if kind == "randint" else values  # randint's high is excluded
    return values


def _check_entries(
    entries: dict[str, Any], config: JobConfig, where: str, manifest: Manifest | None, note: str = ""
) -> None:
    """Every value of each spec in ``entries`` set on ``config`` makes a valid job; errors name ``where.key`` and
    ``note``."""
    for key, spec in entries.items():
        if key in ("method.name", BRANCHES):
            raise ConfigError(
                f"{where}.{key}: vary the method with branches, `method: {{simclr: {{...}}, byol: "
                "{...}}`, so that each trial takes only its own method's options"
            )
        for value in _values(key, spec, f"{where}.{key}"):
            entry = f"{where}.{key}{note}"
            _valid(with_values(config, {key: value}, entry), manifest, entry)


def _valid(config: JobConfig, manifest: Manifest | None, where: str) -> JobConfig:
    """``validate(config, manifest)``, its error prefixed with the entry of the space that made ``config``."""
    try:
        return validate(config, manifest)
    except ConfigError as exn:
        raise ConfigError(f"{where}: {exn}") from None


def check_space(space: Any, config: JobConfig, manifest: Manifest | None = None) -> dict[str, Any]:
    """``space``, once every value it can take makes a valid job of ``config`` (for the data of ``manifest``,
    when given); raises naming the entry."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("search.space: expected a mapping of config keys to e.g. {grid: [0.1, 0.5]}")
    branches = space.get(BRANCHES)
    plain = {key: spec for key, spec in space.items() if key != BRANCHES}
    if branches is None:
        _check_entries(plain, config, "search.space", manifest)
        return space
    if not isinstance(branches, dict) or not branches:
        raise ConfigError(
            "search.space.method: expected one branch per method, e.g. {simclr: "
            "{method.temperature: {grid: [0.1, 0.5]}}, byol: {}}"
        )
    if method_keys := [key for key in plain if key.startswith("method.")]:
        raise ConfigError(f"search.space.{method_keys[0]}: with method branches, a method's options go in its branch")
    for name, branch in branches.items():
        where = f"search.space.method.{name}"
        if name not in METHODS:
            raise ConfigError(f"{where}: unknown method {name!r}; choose one of {', '.join(METHODS)}")
        if not isinstance(branch or {}, dict):
            raise ConfigError(f"{where}: expected a mapping of config keys to specs or fixed values")
        if both := sorted(set(branch or {}) & set(plain)):
            raise ConfigError(f"{where}.{both[0]}: also in the space itself; set it in one place")
        fixed = {key: value for key, value in (branch or {}).items() if not _is_spec(value)}
        trial = _valid(with_values(config, {"method.name": name, **fixed}, where), manifest, where)
        _check_entries({key: spec for key, spec in (branch or {}).items() if key not in fixed}, trial, where, manifest)
        _check_entries(plain, trial, "search.space", manifest, f" (with method {name})")  # every branch's trials
    return space


def validate_search(config: JobConfig, search: SearchConfig, manifest: Manifest | None = None) -> SearchConfig:
    """``search``'s keys and space checked against the trials' base job ``config`` (and ``manifest``)."""
    options.check(search, "search")
    check_run_name(search.name, "search.name")  # the parent run's, and its trials' names start with it
    check_space(search.space, config, manifest)
    return search


def load_search(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[JobConfig, SearchConfig]:
    """The trials' base job config and the search section of search file ``path``: the ``search.base`` job (if
    any) with the file's own job sections and ``overrides`` (``section.key=value`` for job sections or
    ``search``) set on it."""
    raw = read_yaml(path)
    values = parse_overrides(overrides)
    search_raw = raw.pop("search", None)
    if not isinstance(search_raw, dict):
        raise ConfigError(f"{path}: a search file needs a `search` section with at least `space`")
    search_raw |= {key.partition(".")[2]: values.pop(key) for key in list(values) if key.startswith("search.")}
    search = options.build(SearchConfig, search_raw, f"{path}: search")
    base = search.base and Path(path).parent / search.base
    config = JobConfig.from_dict(read_yaml(base), str(base)) if base else JobConfig()
    config = validate(with_values(config, flatten(raw, str(path)) | values, str(path)))
    return config, validate_search(config, search)


def tune_space(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune's ``param_space`` for a checked space: method branches become a grid over dicts of their keys."""
    from ray import tune

    makers = {"grid": tune.grid_search, "choice": tune.choice}
    ranges = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}

    def domain(spec: Any) -> Any:
        if not _is_spec(spec):
            return spec  # a branch's fixed value
        kind, values = next(iter(spec.items()))
        return makers[kind](values) if kind in makers else ranges[kind](*values)

    result = {key: domain(spec) for key, spec in space.items() if key != BRANCHES}
    if BRANCHES in space:
        result[BRANCHES] = tune.grid_search(
            [
                {"method.name": name, **{key: domain(spec) for key, spec in (branch or {}).items()}}
                for name, branch in space[BRANCHES].items()
            ]
        )
    return result


def trial_values(params: dict[str, Any]) -> dict[str, Any]:
    """``{"section.key": value}`` of a trial's Tune config: its method branch's keys merged in."""
    return {**{key: value for key, value in params.items() if key != BRANCHES}, **params.get(BRANCHES, {})}


def grid_points(space: dict[str, Any]) -> int:
    """Trials one draw of ``space`` makes: the product of its grids' sizes, branches adding theirs up."""

    def points(entries: dict[str, Any]) -> int:
        return math.prod(len(spec["grid"]) for spec in entries.values() if _is_spec(spec) and "grid" in spec)

    branches = space.get(BRANCHES)
    return points(space) * (sum(points(branch or {}) for branch in branches.values()) if branches else 1)


def is_log_scale(spec: dict[str, list]) -> bool:
    """Whether a parameter is best plotted on a log axis (loguniform, or positive values spanning 10x)."""
    kind, values = next(iter(spec.items()))
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return kind == "loguniform" or (
        len(numbers) == len(values) and min(numbers) > 0 and math.log10(max(numbers) / min(numbers)) >= 1
    )
