"""JSON that stays JSON: every file a run writes goes through here, so none holds NaN or Infinity.

Python's ``json`` writes ``NaN``/``Infinity`` by default, which no strict parser (JavaScript,
``jq``, Go, Rust) reads. A figure that does not exist (a validation loss never computed, an
accuracy on an empty validation part) is written as ``null`` instead, and the writer says why in a
neighbouring field where it knows (``"validation": "none: …"``). ``dumps`` refuses anything else
that is not JSON (``allow_nan=False``), so a new non-finite value fails the test that writes it
instead of producing a file others cannot read.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±Infinity) replaced by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``finite(value)``, refusing anything a strict parser would not read."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def loads(text: str) -> Any:
    """A strict parse: ``NaN``, ``Infinity`` and ``-Infinity`` are errors, as in every other JSON reader."""
    return json.loads(text, parse_constant=_refuse_constant)
