"""The machinery of typed options: declare a field once (type, default, range, choices, help), check
any value against it, and describe it for help texts and listings.

Every option emoclip takes is a field of a dataclass in ``emoclip.schema``, declared with
``option(default, "help", min=…, choices=…)``. From that one declaration come: the check of a value
from a config file, ``--set KEY=VALUE`` or a sweep grid (type *and* range, one line naming the
option, the valid range and the value it got), the CLI flag's type and help, and the listing of
``emoclip methods``. Nothing here imports torch: checking a config must be instant.

Numbers parse as users write them. YAML 1.1 (PyYAML) reads ``1e-6`` as a *string* (its float
rule needs a dot), so a float field accepts a string that is a decimal number, and
``load_value`` (for ``--set`` and grid files) reads such words as numbers in the first place.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from emoclip.core.errors import EmoclipError, short_repr

_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a text", bool: "true or false",
               list: "a list", tuple: "a list", dict: "a mapping"}
# YAML 1.2's float: digits with an exponent and no dot (1e-6) count too.
_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field's metadata says beyond its type: help, an allowed range or choices, a CLI flag."""

    help: str
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[str, ...] | None = None
    rule: Callable[[Any], bool] | None = None   # a custom check, with rule_text saying what it allows
    rule_text: str | Callable[[], str] = ""     # a callable: computed when shown (a registry read lazily)

    def allows(self, value: Any) -> bool:
        if self.rule is not None:
            return bool(self.rule(value))
        if self.choices is not None and value not in self.choices:
            return False
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
                return False
            if self.max is not None and (value > self.max or (self.max_open and value == self.max)):
                return False
        return True

    def allowed_text(self) -> str:
        """The valid values in words: 'at least 1', 'in (0, 1]', 'one of sgd, adam'."""
        if self.rule_text:
            return self.rule_text() if callable(self.rule_text) else self.rule_text
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        low, high = self.min, self.max
        if low is not None and high is not None:
            return f"in {'(' if self.min_open else '['}{low:g}, {high:g}{')' if self.max_open else ']'}"
        if low is not None:
            return f"above {low:g}" if self.min_open else ("at least 1" if low == 1 else f"{low:g} or more")
        if high is not None:
            return f"below {high:g}" if self.max_open else f"{high:g} or less"
        return ""


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False,
           choices: Sequence[str] | None = None, rule: Callable[[Any], bool] | None = None,
           rule_text: str | Callable[[], str] = "") -> Any:
    """A dataclass field with its help and its valid values (checked by ``check_options``/``validate``)."""
    if not help:
        raise ValueError("every option needs help")
    spec = Spec(help, min, max, min_open, max_open, tuple(choices) if choices is not None else None, rule, rule_text)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get("spec") or Spec(help="")


def number_word(value: Any) -> Any:
    """``'1e-6'`` → ``1e-06``: a string that is a decimal number becomes a float; anything else unchanged."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float rule (``1e-6`` is a number, not a string)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_value(text: str) -> Any:
    """A ``--set`` value as YAML (``true``, ``[1, 2]``, ``{a: b}``), numbers as users write them (``1e-6``)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def load_yaml(text: str) -> Any:
    """A YAML document (sweep grids), with the same number rule as ``load_value``."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def _alternatives(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _coerce(kind: Any, value: Any) -> tuple[bool, Any]:
    """(fits, the value as the field keeps it) for one alternative of a field's type."""
    origin = typing.get_origin(kind) or kind
    if kind is Any:
        return True, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        value = number_word(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False, value
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        if args:
            items = [_coerce(args[0], v) for v in value]
            if not all(ok for ok, _ in items):
                return False, value
            value = [v for _, v in items]
        return True, tuple(value) if origin is tuple else list(value)
    if origin is dict:
        return isinstance(value, dict), value
    return True, value  # another type: the dataclass itself decides


def _type_words(alternatives: Sequence[Any]) -> str:
    words = []
    for kind in alternatives:
        if kind is type(None):
            continue
        origin = typing.get_origin(kind) or kind
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        if origin in (list, tuple) and args:
            words.append(f"a list of {_TYPE_WORDS.get(args[0], 'values').removeprefix('a ')}s")
        else:
            words.append(_TYPE_WORDS.get(origin, getattr(origin, "__name__", str(origin))))
    return " or ".join(words) or "a value"


def type_words(cls: type, name: str) -> str:
    """A field's type in words ('a number', 'a whole number or none')."""
    alternatives = _alternatives(typing.get_type_hints(cls).get(name, Any))
    text = _type_words(alternatives)
    return text + (" or none" if type(None) in alternatives else "")


def check_value(cls: type, name: str, value: Any, what: str, fix: str) -> Any:
    """``value`` as field ``name`` of ``cls`` keeps it (numbers from words, lists as the field's
    container), or an ``EmoclipError`` naming the option, what it must be and what it got."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    alternatives = _alternatives(typing.get_type_hints(cls).get(name, Any))
    spec = spec_of(f)
    if value is None and type(None) in alternatives:
        return None
    for kind in alternatives:
        if kind is type(None):
            continue
        ok, kept = _coerce(kind, value)
        if ok:
            break
    else:
        raise EmoclipError(f"{what} option {name} must be {_type_words(alternatives)}, got {short_repr(value)}; {fix}")
    values = kept if isinstance(kept, list | tuple) and spec.rule is None else [kept]
    for item in values:
        if not spec.allows(item):
            raise EmoclipError(f"{what} option {name} must be {spec.allowed_text()}, got {short_repr(item)}; {fix}")
    return kept


def check_options(cls: type, options: dict[str, Any], what: str, fix: str = "fix it in --set or the config"
                  ) -> dict[str, Any]:
    """``options`` checked against ``cls``'s fields: unknown keys refused (listing the known ones),
    every value type- and range-checked and kept as its field keeps it."""
    if not isinstance(options, dict):
        raise EmoclipError(f"{what} options must be a mapping of option: value, got {short_repr(options)}; {fix}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(map(str, set(options) - set(names)))
    if unknown:
        raise EmoclipError(f"{what} has no option {', '.join(unknown)}; its options: {', '.join(names) or 'none'}")
    return {name: check_value(cls, name, value, what, fix) for name, value in options.items()}


def build(cls: type, options: dict[str, Any] | None, what: str, fix: str = "fix it in --set or the config") -> Any:
    """An instance of ``cls`` from checked ``options`` (the rest at their defaults)."""
    return cls(**check_options(cls, dict(options or {}), what, fix))


def validate(instance: Any, what: str, fix: str = "fix it in --set or the config") -> None:
    """Check every field of a constructed dataclass (for ``__post_init__``: the Python API builds
    configs directly, and must be refused the same values as the CLI)."""
    for f in dataclasses.fields(instance):
        kept = check_value(type(instance), f.name, getattr(instance, f.name), what, fix)
        if kept is not getattr(instance, f.name):  # numbers from words, lists in the field's container
            object.__setattr__(instance, f.name, kept)


def check_option_types(cls: type, options: dict[str, Any], what: str) -> dict[str, Any]:
    """The checked options (the name older callers use; ranges are checked too)."""
    return check_options(cls, options, what)


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One option described for people: listings, help texts, docs."""

    name: str
    type: str
    default: Any
    allowed: str
    help: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def describe(cls: type) -> list[OptionInfo]:
    """Every option of ``cls``, in declaration order, with its type, default, valid values and help."""
    return [OptionInfo(f.name, type_words(cls, f.name), default_of(f), spec_of(f).allowed_text(), spec_of(f).help)
            for f in dataclasses.fields(cls)]
