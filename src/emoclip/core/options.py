"""Checking option values from configs and ``--set`` against the dataclass that declares them.

YAML gives ``--set n_ctx=abc`` the string 'abc' and ``lr: 1e-3`` a string too; passed on, such a
value fails deep inside training with a traceback, or is silently coerced. Every option class is a
dataclass with typed fields, so one check against those types refuses it up front, naming the
option, the type it needs and the value it got.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from emoclip.core.errors import EmoclipError, short_repr

_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a text", bool: "true or false"}


def _accepts(kind: Any, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is str:
        return isinstance(value, str)
    return True  # other types: the dataclass itself decides


def _allowed(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def check_option_types(cls: type, options: dict[str, Any], what: str) -> dict[str, Any]:
    """``options`` unchanged when every value fits its field's type; else an ``EmoclipError``.

    Whole numbers are accepted for float fields (and made floats); nothing else is converted.
    """
    hints = typing.get_type_hints(cls)
    checked = dict(options)
    for f in dataclasses.fields(cls):
        if f.name not in options:
            continue
        value, allowed = options[f.name], _allowed(hints.get(f.name, Any))
        if value is None and type(None) in allowed:
            continue
        if not any(_accepts(kind, value) for kind in allowed if kind is not type(None)):
            words = " or ".join(_TYPE_WORDS.get(k, getattr(k, "__name__", str(k))) for k in allowed
                                if k is not type(None))
            raise EmoclipError(f"{what} option {f.name} must be {words}, got {short_repr(value)}; "
                               "fix it in --set or the config")
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            checked[f.name] = float(value)
    return checked
