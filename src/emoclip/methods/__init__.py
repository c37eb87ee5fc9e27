"""Trainable methods on a frozen CLIP, one module each, registered by name (see ``base``).

The names below load on first use (PEP 562): the method cards (``emoclip.schema.methods``) and the
BART weight checks (``methods.ugrie.bart_weights``) live under this package and must stay readable
without importing torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_LAZY = {"Method": "base", "MethodConfig": "base", "create_method": "base", "list_methods": "base",
         "register_method": "base"}

if TYPE_CHECKING:
    from emoclip.methods.base import Method, MethodConfig, create_method, list_methods, register_method


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'emoclip.methods' has no attribute {name!r}")


__all__ = ["Method", "MethodConfig", "create_method", "list_methods", "register_method"]
