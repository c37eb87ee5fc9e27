"""The ``emoclip`` command line."""

from emoclip.cli.main import main

__all__ = ["main"]
