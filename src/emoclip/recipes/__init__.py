"""The published recipes, shipped inside the package: named YAML configs for methods, datasets, sweeps
and unified runs.

A recipe is one file under ``emoclip/recipes/<kind>/<name>.yaml`` (kinds: ``methods`` — a method with
its paper's options and training schedule; ``datasets`` — a dataset's taxonomy and data paths;
``sweeps`` — a grid for ``emoclip sweep``; ``unified`` — several datasets at once). It is named by its
file stem, so ``emoclip train --recipe emotionroi6 --recipe ptdpc-paper`` and ``--config
ptdpc-paper`` work from a ``pip install`` as they do from a checkout (where ``configs/`` is a link
to this folder). Names are unique across kinds; a test holds that.

The lookup reads the package folder only (no torch, no network), so listing recipes is instant.
"""

from __future__ import annotations

from pathlib import Path

from emoclip.core.errors import EmoclipError

RECIPES_DIR = Path(__file__).resolve().parent
KINDS = ("methods", "datasets", "sweeps", "unified")
SUFFIXES = (".yaml", ".yml", ".toml")


def list_recipes(kind: str | None = None) -> dict[str, Path]:
    """Every shipped recipe by name (its file stem), sorted; ``kind`` keeps one folder (e.g. "methods")."""
    if kind is not None and kind not in KINDS:
        raise EmoclipError(f"unknown recipe kind '{kind}'; use one of {', '.join(KINDS)}")
    found: dict[str, Path] = {}
    for folder in KINDS if kind is None else (kind,):
        for path in sorted((RECIPES_DIR / folder).glob("*")):
            if path.suffix.lower() in SUFFIXES and path.is_file():
                found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def recipe_kind(name: str) -> str:
    """The folder a recipe lives in ("methods", "datasets", "sweeps" or "unified")."""
    return recipe_path(name).parent.name


def recipe_path(name: str) -> Path:
    """The file of the recipe called ``name`` (a trailing ``.yaml`` is allowed); one line listing the
    names when there is none."""
    stem = name[:-len(Path(name).suffix)] if Path(name).suffix.lower() in SUFFIXES else name
    recipes = list_recipes()
    if stem not in recipes:
        raise EmoclipError(f"unknown recipe '{name}'; the shipped recipes: {', '.join(recipes)}")
    return recipes[stem]


def is_recipe_name(text: str) -> bool:
    """True when ``text`` is a bare recipe name (no folder part), e.g. "ptdpc-paper" or "emotionroi6.yaml"."""
    if not text or "/" in text or "\\" in text:
        return False
    stem = text[:-len(Path(text).suffix)] if Path(text).suffix.lower() in SUFFIXES else text
    return stem in list_recipes()


def describe(path: Path) -> str:
    """The first comment line of a recipe: what it is (the files start with one)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


__all__ = ["KINDS", "RECIPES_DIR", "describe", "is_recipe_name", "list_recipes", "recipe_kind", "recipe_path"]
