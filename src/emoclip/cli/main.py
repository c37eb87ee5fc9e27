"""The ``emoclip`` command line: the group, with each command imported only when it runs.

Every command is a thin layer over the Python API; this module stays cheap to import so that
``emoclip --help`` and the listing commands start fast.
"""

from __future__ import annotations

import importlib

import click

from emoclip.cli.common import EmoclipGroup, setup_logging

# Command name -> "module:function"; a command's module (and what it imports) loads only when it runs.
COMMANDS = {
    "aggregate": "emoclip.cli.train:aggregate",
    "browse": "emoclip.cli.browse:browse",
    "evaluate": "emoclip.cli.evaluate:evaluate",
    "merge": "emoclip.cli.tag:merge",
    "methods": "emoclip.cli.info:methods",
    "models": "emoclip.cli.info:models",
    "predict": "emoclip.cli.tag:predict",
    "search": "emoclip.cli.browse:search",
    "serve": "emoclip.cli.serve:serve",
    "split": "emoclip.cli.datasets:split_command",
    "sweep": "emoclip.cli.train:sweep",
    "taxonomies": "emoclip.cli.info:taxonomies",
    "templates": "emoclip.cli.info:templates",
    "train": "emoclip.cli.train:train_command",
}


class LazyGroup(EmoclipGroup):
    """The main group: lists commands from ``COMMANDS`` and imports one on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--verbose", "-v", is_flag=True, help="Log what happens (weights, cache, timings).")
@click.option("--debug", is_flag=True, help="Show the Python traceback of any failure (for bug reports).")
@click.version_option(package_name="emoclip")
def main(verbose: bool, debug: bool) -> None:
    """emoclip: tag images with the emotions they evoke, using CLIP."""
    setup_logging(verbose)


if __name__ == "__main__":
    main()
