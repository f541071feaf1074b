"""What the registered encoder is made of, and its logging kept quiet: the module it loads as (shipped with it,
importing only torch), the requirements pinned to this process's versions, and what MLflow says while logging it
that is not the user's news (its advice against pickled models, which ours are only in name; its notices of the
registration, which the run's result states)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

SHIPPED = Path(__file__).with_name("sslpipe_encoder.py")  # the registered model's code: imports only torch
REGISTRATION_NOTICES = ("Successfully registered model", "Registered model", "Created version")


def pinned_requirements() -> list[str]:
    """What loading the registered encoder needs, pinned to the versions this process runs: torch (its local label
    such as ``+cpu`` dropped, so that pip finds it) and cloudpickle, MLflow's pickler; MLflow adds itself."""
    import cloudpickle

    return [
        f"{name}=={version.split('+')[0]}"
        for name, version in (("torch", torch.__version__), ("cloudpickle", cloudpickle.__version__))
    ]


def shipped_module() -> ModuleType:
    """:data:`SHIPPED` imported under the top-level name it has where MLflow ships it (the model's ``code/``), so
    that a pickled encoder refers to that name and not to ``pipeline``."""
    if (module := sys.modules.get(SHIPPED.stem)) is None:
        spec = importlib.util.spec_from_file_location(SHIPPED.stem, SHIPPED)
        module = importlib.util.module_from_spec(spec)
        sys.modules[SHIPPED.stem] = module
        spec.loader.exec_module(module)
    return module


class _Without(io.TextIOBase):
    """``stream`` less the whole lines that start with one of ``prefixes``."""

    def __init__(self, stream: Any, prefixes: tuple[str, ...]) -> None:
        self.stream, self.prefixes, self.pending = stream, prefixes, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not line.startswith(self.prefixes):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def _without_lines(prefixes: tuple[str, ...]) -> Iterator[None]:
    """For the block, standard error less the whole lines that start with one of ``prefixes``."""
    filtered = _Without(sys.stderr, prefixes)
    try:
        with contextlib.redirect_stderr(filtered):
            yield
    finally:
        filtered.stream.write(filtered.pending)


@contextlib.contextmanager
def quiet_registration() -> Iterator[None]:
    """For the block, neither MLflow's pickle advice nor its registration notices."""
    with _without_pickle_advice(), _without_lines(REGISTRATION_NOTICES):
        yield


@contextlib.contextmanager
def _without_pickle_advice() -> Iterator[None]:
    """MLflow's warning against pickled models, which advises its pt2 format, left out for the block: ours pickles
    only the shipped class and a pt2 program's bytes."""

    def advice(record: logging.LogRecord) -> bool:
        return "exercising caution" not in record.getMessage()

    logger = logging.getLogger("mlflow.pytorch")
    logger.addFilter(advice)
    try:
        yield
    finally:
        logger.removeFilter(advice)
