"""Typed option sections: dataclasses whose fields declare everything a user may set.

A field's annotation carries its type, the values it allows (``Literal``), its limits (``annotated_types``:
``Gt``, ``Ge``, ``Interval``), when it applies (:class:`When`, e.g. only to one optimizer) and a one-line
description (a plain string)::

    @dataclass
    class SimCLROptions:
        temperature: Annotated[float, Gt(0), "NT-Xent temperature"] = 0.5

:func:`build` makes a section from a mapping (YAML or command-line values; ``"1e-3"`` becomes a float),
:func:`check` checks one made or changed in Python, :func:`describe` lists the fields for the README. Errors are
one :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval, Le, Lt

from pipeline.errors import ConfigError

NONE = type(None)
LIMITS = (Gt, Ge, Lt, Le, Interval)


class When:
    """A field that applies only while another value of its section is one of ``values``: ``When("name", "lars")``
    on ``optim.momentum``. ``key`` names a field or a property of the section (``model.kind``)."""

    def __init__(self, key: str, *values: Any) -> None:
        self.key, self.values = key, values

    def holds(self, section: Any) -> bool:
        return getattr(section, self.key) in self.values

    def __str__(self) -> str:
        return f"{self.key} {' or '.join(map(str, self.values))}"


@dataclass(frozen=True)
class Declared:
    """One field: ``kinds`` are its allowed types (``NoneType`` for null), ``choices`` its allowed values (strings,
    integers or booleans), ``when`` the conditions under which it applies (none: always)."""

    name: str
    kinds: tuple[type, ...]
    choices: tuple[str, ...]
    limits: tuple[Any, ...]
    doc: str
    default: Any
    when: tuple[When, ...] = ()

    def applies(self, section: Any) -> bool:
        """Whether this field applies to ``section`` (an instance of the class that declares it)."""
        return all(condition.holds(section) for condition in self.when)


@functools.cache
def declared(cls: type) -> tuple[Declared, ...]:
    """The declared fields of dataclass ``cls``, in order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    result = []
    for f in dataclasses.fields(cls):
        hint, metadata = hints[f.name], ()
        if typing.get_origin(hint) is Annotated:
            hint, metadata = hint.__origin__, hint.__metadata__
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds, choices = [], []
        for member in members:
            if typing.get_origin(member) is Literal:
                choices += typing.get_args(member)
                kinds += dict.fromkeys(type(choice) for choice in typing.get_args(member))
            else:
                kinds.append(typing.get_origin(member) or member)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        result.append(
            Declared(
                f.name,
                tuple(kinds),
                tuple(choices),
                tuple(m for m in metadata if isinstance(m, LIMITS)),
                " ".join(m for m in metadata if isinstance(m, str)),
                default,
                tuple(m for m in metadata if isinstance(m, When)),
            )
        )
    return tuple(result)


def keys(cls: type) -> list[str]:
    return [field.name for field in declared(cls)]


def build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """An instance of section ``cls`` from ``values`` (the rest default); unknown keys, values of the wrong type
    and values out of their limits raise naming ``where.key``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    fields = {field.name: field for field in declared(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; keys are {', '.join(fields)}")
    section = cls(**{key: _coerce(value, fields[key], f"{where}.{key}") for key, value in values.items()})
    check(section, where)
    return section


def check(section: Any, where: str) -> None:
    """Every field of ``section`` is of its declared type (as set in Python: no text for a number), one of its
    choices and within its limits."""
    for field in declared(type(section)):
        value, key = getattr(section, field.name), f"{where}.{field.name}"
        coerced = _coerce(value, field, key)
        if type(coerced) is not type(value) and not (type(value) is int and type(coerced) is float):
            raise ConfigError(f"{key}: expected {_type_names(field)}, got {value!r}")
        for limit in field.limits if value is not None else ():
            if not _holds(limit, value):
                raise ConfigError(f"{key} must be {_limit_text(limit)}, got {value!r}")


def _coerce(value: Any, field: Declared, where: str) -> Any:
    """``value`` checked against (or, for strings from the command line, converted to) ``field``'s type."""
    if value is None and NONE in field.kinds:
        return None
    if field.choices:
        if not any(value == choice and type(value) is type(choice) for choice in field.choices):
            null = " (or null)" if NONE in field.kinds else ""
            raise ConfigError(f"{where}: {value!r}; choose one of {', '.join(map(_text, field.choices))}{null}")
        return value
    for kind in field.kinds:
        if kind is bool and isinstance(value, bool):
            return value
        if kind in (int, float) and isinstance(value, int) and not isinstance(value, bool):
            return kind(value)
        if kind in (int, float) and isinstance(value, (float, str)):
            try:
                number = float(value)  # PyYAML reads 1e-3 as a string
            except ValueError:
                continue
            if kind is float or number.is_integer():
                return kind(number)
        if kind not in (bool, int, float, NONE) and isinstance(value, kind):
            return value
    raise ConfigError(f"{where}: expected {_type_names(field)}, got {value!r}")


def _text(value: Any) -> str:
    """``value`` as YAML writes it: ``true``, ``null``, ``auto``."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _type_names(field: Declared) -> str:
    return " or ".join("null" if kind is NONE else kind.__name__ for kind in field.kinds)


def _holds(limit: Any, value: float) -> bool:
    compare = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
    return all(compare[name](value, bound) for name, bound in _bounds(limit))


def _bounds(limit: Any) -> list[tuple[str, float]]:
    return [(name, bound) for name in ("gt", "ge", "lt", "le") if (bound := getattr(limit, name, None)) is not None]


def _limit_text(limit: Any) -> str:
    """``> 0``, ``>= 0`` or, for an interval, ``in [0, 1)``."""
    if not isinstance(limit, Interval):
        [(name, bound)] = _bounds(limit)
        return f"{dict(gt='>', ge='>=', lt='<', le='<=')[name]} {bound}"
    bounds = dict(_bounds(limit))
    low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}"
    high = f"{bounds['le']}]" if "le" in bounds else f"{bounds['lt']})"
    return f"in {low}, {high}"


def describe(cls: type) -> list[tuple[str, str, str, str]]:
    """``(name, what it takes, default, description)`` for every field of ``cls``, as Markdown cells."""
    rows = []
    for field in declared(cls):
        if field.choices:
            takes = ", ".join(f"`{_text(choice)}`" for choice in field.choices)
        else:
            takes = " or ".join(kind.__name__ for kind in field.kinds if kind is not NONE)
        takes += "".join(f" {_limit_text(limit)}" for limit in field.limits)
        if NONE in field.kinds:
            takes += " or null"
        rows.append((field.name, takes, f"`{_text(field.default)}`", field.doc))
    return rows
