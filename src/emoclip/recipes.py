"""Named training recipes: ``list_recipes()`` and ``recipe_path(name)`` (``emoclip train --recipe NAME``).

A minimal stand-in over the repository's ``configs/methods/*.yaml``, so the public API and the
``--recipe`` flag work from a source checkout; the packaging work ships the recipes as package
data behind these same two functions.
"""

from __future__ import annotations

from pathlib import Path

from emoclip.core.errors import EmoclipError

_FOLDER = Path(__file__).resolve().parents[2] / "configs" / "methods"


def list_recipes() -> dict[str, Path]:
    """Every recipe by name (the file's stem), sorted."""
    if not _FOLDER.is_dir():
        return {}
    return {p.stem: p for p in sorted(_FOLDER.glob("*.yaml"))}


def recipe_path(name: str) -> Path:
    """The config file of recipe ``name``, or one line listing the recipes there are."""
    recipes = list_recipes()
    if name not in recipes:
        raise EmoclipError(f"unknown recipe '{name}'; the recipes: {', '.join(recipes) or 'none installed'}")
    return recipes[name]
