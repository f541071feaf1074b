"""The job: its sections and the one rule for which keys apply to it (:func:`applies`). The job's dict, its MLflow
params, the refusal of a key set where it does not apply and ``sslpipe options`` all follow from that rule.

Each part of the library declares its own section: the models ``model`` (with the options of each kind of
encoder), the optimizers ``optim`` (with each optimizer's), each method its options, picked by ``method.name``;
the rest are in :mod:`pipeline.sections`. A key applies when its section's kind declares it (a method's own
options; a field's :class:`~pipeline.options.When`, e.g. ``optim.momentum`` for LARS, ``model.width`` for the
small CNN, ``method.decoder_std`` for a Gaussian likelihood) and, for the ``model`` keys that some methods read
(their ``model_keys``: the heads), when the job's method reads it. The ``finetune`` section is a fine-tuning job's
(:class:`FinetuneJob`) only. What does not apply holds its default, is not logged and, set explicitly, is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline import options
from pipeline.errors import ConfigError
from pipeline.methods import METHODS, MethodOptions
from pipeline.methods.simclr import SimCLROptions
from pipeline.models import ModelConfig
from pipeline.optim import OptimConfig
from pipeline.sections import (
    AugmentConfig,
    DataConfig,
    EvalConfig,
    ExportConfig,
    FinetuneConfig,
    TrackConfig,
    TrainConfig,
)

CPU_WORKERS = 2  # train.num_workers unset, without GPUs
KINDS = {"method": "name", "optim": "name", "model": "encoder"}  # the key that names each section's kind
SELECTORS = ("name", "kind")  # what When conditions on a section's kind are keyed by
COMMANDS = {"finetune": "sslpipe finetune", "search": "sslpipe tune"}  # sections that one command's files hold


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodOptions = field(default_factory=SimCLROptions)  # the options of the method that method.name names
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every key that applies to this job (:func:`applies`), by section."""
        return {
            section: {key: value for key, value in _values(self, section).items() if applies(self, section, key)}
            for section in sections(self)
        }

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key that applies to this job (see :meth:`to_dict`)."""
        return {f"{s}.{k}": v for s, section in self.to_dict().items() for k, v in section.items()}

    @property
    def evaluation_shards(self) -> str:
        return self.eval.shards or self.data.shards

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "config", carried: Collection[str] = ()) -> JobConfig:
        """Sections from a mapping; every key is checked for its type, allowed values and limits, and refused
        where it does not apply. Keys in ``carried`` (``section.key``: kept from another job, such as the job a
        search trial changes) are left out instead where they no longer apply."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
        hints = typing.get_type_hints(cls)
        for name in raw:
            if name not in hints:
                where = f"; the {name} section is for `{COMMANDS[name]}`" if name in COMMANDS else ""
                raise ConfigError(f"{origin}: unknown section {name!r}{where}; sections are {', '.join(hints)}")
        job = cls(
            **{
                name: options.build(hints[name], values or {}, f"{origin}: {name}")
                for name, values in raw.items()
                if name != "method"
            },
            method=_method_options(raw.get("method") or {}, origin),
        )
        for section, values in raw.items():
            for key in values or {}:
                if f"{section}.{key}" not in carried and (problem := why_not(job, section, key)):
                    raise ConfigError(f"{origin}: {problem}")
        return dataclasses.replace(job, **{section: _with_defaults(job, section) for section in sections(job)})

    @classmethod
    def from_stored(cls, raw: dict[str, Any], origin: str) -> JobConfig:
        """A job as an earlier run stored it (a checkpoint's, an export's ``encoder.json``): what no longer applies
        (earlier versions stored keys that did not apply) is left out instead of refused."""
        return cls.from_dict(raw, origin, carried=flatten(raw, origin))


@dataclass
class FinetuneJob(JobConfig):
    """A fine-tuning job (``sslpipe finetune``): a pretraining job's sections and ``finetune``."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def sections(job: JobConfig) -> list[str]:
    return [each.name for each in dataclasses.fields(job)]


def _values(job: JobConfig, section: str) -> dict[str, Any]:
    """Every value of ``section``, ``method.name`` first."""
    values = dataclasses.asdict(getattr(job, section))
    return {"name": job.method.name, **values} if section == "method" else values


def _declared(section: Any, key: str) -> options.Declared:
    return next(each for each in options.declared(type(section)) if each.name == key)


def readers(model_key: str) -> list[str]:
    """The methods that read ``model.<model_key>`` (none: a key of the encoder, read whatever the method)."""
    return [name for name, method in METHODS.items() if model_key in method.model_keys]


def applies(job: JobConfig, section: str, key: str) -> bool:
    """Whether ``section.key`` applies to ``job``: the one rule (see the module's docstring)."""
    values = getattr(job, section)
    if key == KINDS.get(section):
        return True
    read = section != "model" or not readers(key) or job.method.name in readers(key)
    return read and _declared(values, key).applies(values)


def why_not(job: JobConfig, section: str, key: str) -> str | None:
    """Why ``section.key`` does not apply to ``job``, naming the kind and what it takes; ``None`` where it
    applies."""
    if applies(job, section, key):
        return None
    values = getattr(job, section)
    if section == "model" and readers(key) and job.method.name not in readers(key):
        return f"model.{key} does not apply to {job.method.name}; {', '.join(readers(key))} read it"
    failing = [condition for condition in _declared(values, key).when if not condition.holds(values)]
    kind = " with ".join(
        [
            str(getattr(values, KINDS[section], section)) if section in KINDS else section,
            *(f"{c.key} {_shown(getattr(values, c.key))}" for c in failing if c.key not in SELECTORS),
        ]
    )
    takes = [other for other in _values(job, section) if other != KINDS.get(section) and applies(job, section, other)]
    return f"{section}.{key} does not apply to {kind}; {kind} takes {', '.join(takes)}"


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)


def _with_defaults(job: JobConfig, section: str) -> Any:
    """``job``'s ``section`` with every key that does not apply at its default: a job holds one form."""
    values = getattr(job, section)
    return dataclasses.replace(
        values,
        **{
            each.name: copy.deepcopy(each.default)
            for each in options.declared(type(values))
            if not applies(job, section, each.name)
        },
    )


def _method_options(values: Any, origin: str) -> MethodOptions:
    """The ``method`` section: the options class of ``values["name"]`` (default simclr) built from the rest."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: method: expected a mapping, got {values!r}")
    values = dict(values)
    name = values.pop("name", SimCLROptions.name)
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"{origin}: method.name: unknown method {name!r}; choose one of {', '.join(METHODS)}")
    own = options.keys(METHODS[name].Options)
    for key in values:
        if key not in own:
            applies_elsewhere = any(key in options.keys(method.Options) for method in METHODS.values())
            problem = f"method.{key} does not apply to {name}" if applies_elsewhere else f"unknown key 'method.{key}'"
            raise ConfigError(f"{origin}: {problem}; {name} takes {', '.join(own)}")
    return options.build(METHODS[name].Options, values, f"{origin}: method")


def flatten(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """``{"section.key": value}`` of a mapping of sections."""
    for section, values in raw.items():
        if not isinstance(values or {}, dict):
            raise ConfigError(f"{origin}: {section}: expected a mapping, got {values!r}")
    return {f"{section}.{key}": value for section, values in raw.items() for key, value in (values or {}).items()}


def with_values(config: JobConfig, values: Mapping[str, Any], origin: str) -> JobConfig:
    """A copy of ``config`` with ``{"section.key": value}`` set, each checked like a job file's value. Setting
    ``method.name`` to another method starts that method's options from their defaults; the other keys of
    ``config`` that no longer apply (a switched method's heads, a switched encoder's options) are left out."""
    raw = config.to_dict()
    carried = {f"{section}.{key}" for section, keys in raw.items() for key in keys} - set(values)
    if values.get("method.name", config.method.name) != config.method.name:
        raw["method"] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(f"{origin}: unknown key {key!r}; keys look like method.temperature or optim.lr")
        raw[section][name] = value
    return type(config).from_dict(raw, origin, carried)


def with_workers(config: JobConfig, resources: Mapping[str, float]) -> JobConfig:
    """``config`` with ``train.num_workers`` decided: as set, else one worker per GPU in ``resources`` (Ray's
    ``cluster_resources()``) with ``train.use_gpu``, else :data:`CPU_WORKERS`."""
    if config.train.num_workers is not None:
        return config
    workers = CPU_WORKERS
    if config.train.use_gpu:
        workers = int(resources.get("GPU", 0))
        if workers < 1:
            raise ConfigError(
                "train.use_gpu: Ray sees no GPU in this cluster; start Ray on GPU nodes, or set train.use_gpu=false"
            )
    return dataclasses.replace(config, train=dataclasses.replace(config.train, num_workers=workers))


def dump_config(config: JobConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def reference() -> str:
    """Every key of a job as a Markdown table: each section's keys with, in brackets, what they apply to (a kind,
    the methods that read them, or the command whose section it is); each method's own options after
    ``method.name``."""
    hints = typing.get_type_hints(FinetuneJob)
    rows = []  # (key, what it applies to, takes, default, what)
    for section in (each.name for each in dataclasses.fields(FinetuneJob)):
        if section == "method":
            rows.append(
                (
                    "method.name",
                    "",
                    ", ".join(f"`{name}`" for name in METHODS),
                    f"`{SimCLROptions.name}`",
                    "the method; the keys below apply to theirs",
                )
            )
            rows += [
                (f"method.{key}", ", ".join([name, *notes]), *rest)
                for name, method in METHODS.items()
                for key, notes, *rest in _described(method.Options)
            ]
            continue
        for key, notes, *rest in _described(hints[section]):
            methods = readers(key) if section == "model" else []
            rows.append((f"{section}.{key}", COMMANDS.get(section) or ", ".join([*methods, *notes]), *rest))
    lines = ["| key | takes | default | what |", "| --- | --- | --- | --- |"]
    for key, note, takes, default, what in rows:
        lines.append(f"| `{key}`{f' ({note})' if note else ''} | {takes} | {default} | {what} |")
    return "\n".join(lines)


def _described(cls: type) -> list[tuple[str, list[str], str, str, str]]:
    """``(key, when it applies, takes, default, what)`` for every field of ``cls``."""
    when = {
        each.name: [" or ".join(map(str, c.values)) if c.key in SELECTORS else str(c) for c in each.when]
        for each in options.declared(cls)
    }
    return [(key, when[key], *rest) for key, *rest in options.describe(cls)]
