"""Job files: YAML holding a mapping of sections, with ``section.key=value`` overrides (YAML values), read into a
checked job."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.job_config import JobConfig, with_values
from pipeline.config.validation import validate
from pipeline.errors import ConfigError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping of sections (empty file: ``{}``)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: job config not found") from None
    except yaml.YAMLError as exn:
        raise ConfigError(f"{path}: not valid YAML ({exn})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_overrides(overrides: Collection[str]) -> dict[str, Any]:
    """``{"section.key": value}`` of ``section.key=value`` overrides, the values parsed as YAML."""
    values = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or key.count(".") != 1:
            raise ConfigError(f"override {override!r}: expected section.key=value, e.g. train.epochs=1")
        values[key] = yaml.safe_load(text) if text else None
    return values


def load_config(path: str | Path | None = None, overrides: Collection[str] = ()) -> JobConfig:
    """Read a YAML job file (or start from defaults), apply ``section.key=value`` overrides (YAML values) and
    :func:`~pipeline.config.validation.validate` the result."""
    origin = str(path) if path is not None else "defaults"
    config = JobConfig.from_dict(read_yaml(path), origin) if path is not None else JobConfig()
    return validate(with_values(config, parse_overrides(overrides), origin))
