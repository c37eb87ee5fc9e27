"""Trainable methods on a frozen CLIP, one module each, registered by name (see ``base``)."""

from emoclip.methods.base import Method, MethodConfig, create_method, list_methods, register_method

__all__ = ["Method", "MethodConfig", "create_method", "list_methods", "register_method"]
