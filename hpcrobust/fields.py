"""Typed settings: one field declaration drives validation, `--help` and the README table.

Every settings class in the package (a task's, a model's, an attack's parameters, ...) is a dataclass
whose fields are declared with `setting(...)`. This module turns plain YAML data into those
dataclasses, with a one-line `UserError` naming the key for anything wrong, and lists every key
with its default and meaning. It imports nothing heavy, so any layer may use it.

A settings class may take over its own parsing (`from_data(data, key)`), its own plain form
(`to_data()`) and its own rows in the key table (`describe_rows(prefix)`); attack entries do, because
their keys depend on their type.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import field
from typing import Any

from hpcrobust.errors import UserError

INT_LIMIT = 2**63 - 1  # every integer setting must fit an int64 (seeds, counts, sizes)
_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxlevel = 60, 60, 4, 4, 2


def shown(value: Any) -> str:
    """A value as an error message may print it: bounded, whatever YAML aliases expanded it into."""
    return _SHOWN.repr(value)


def setting(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, lo: float | None = None,
            hi: float | None = None, doc: str = "", factory: Any = None) -> Any:
    """A dataclass field with the metadata that validation, --help and the README read."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` (plain YAML data) as type `tp`, or a UserError naming `key`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if hasattr(tp, "from_data"):
            return tp.from_data(value, key)
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {type(value).__name__}")
        return build(tp, value, key)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {type(value).__name__}")
        return [coerce(v, inner, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type at {key}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT_LIMIT:
                raise UserError(f"{key}: {shown(value)} is too large (at most {INT_LIMIT})")
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) <= 1e308 else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise UserError(f"{key}: {shown(value)} is not a finite number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {shown(value)}")


def check_value(f: dataclasses.Field, value: Any, key: str) -> None:
    choices, lo, hi = f.metadata.get("choices"), f.metadata.get("lo"), f.metadata.get("hi")
    if choices is not None and value not in choices:
        raise UserError(f"{key}: {shown(value)} is not one of {', '.join(choices)}")
    if lo is not None and value < lo:
        raise UserError(f"{key}: {shown(value)} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise UserError(f"{key}: {shown(value)} is above the maximum {hi}")


def build(cls: type, data: dict, prefix: str, unknown: str = "") -> Any:
    """Instantiate settings class `cls` from a mapping; `unknown` adds a hint to the unknown-key error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            name = k if isinstance(k, str) and len(k) <= 60 else shown(k)
            where = f"{prefix}.{name}" if prefix else name
            raise UserError(f"unknown key '{where}'{unknown}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = coerce(data[name], hints[name], key)
        if not isinstance(value, (list, dict)) and not dataclasses.is_dataclass(value):
            check_value(f, value, key)
        kwargs[name] = value
    return cls(**kwargs)


def to_data(obj: Any) -> Any:
    """Settings as plain data (what YAML holds), honouring classes with their own plain form."""
    if hasattr(obj, "to_data"):
        return obj.to_data()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_data(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


def field_row(f: dataclasses.Field, key: str, note: str = "") -> tuple[str, str, str]:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    doc = f.metadata.get("doc", "")
    if f.metadata.get("choices"):
        doc += f" [{'|'.join(f.metadata['choices'])}]"
    return key, repr(default), note + doc


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every key of `cls`, for --help and the README."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        item = inner if inner is not None and dataclasses.is_dataclass(inner) else None
        target = tp if dataclasses.is_dataclass(tp) else item
        if target is not None:
            sub = key + (".N." if item is not None else ".")
            rows += target.describe_rows(sub, f.name) if hasattr(target, "describe_rows") else describe(target, sub)
            continue
        rows.append(field_row(f, key))
    return rows
