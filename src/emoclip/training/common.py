"""What a single-dataset run and a unified run share: reading and merging config files, opening the
configured data, the train/validation carve, the few-shot subset and the feature tensors.

It sits below both ``experiment`` and ``unified`` so that neither imports the other's internals
(``experiment`` dispatches to ``unified`` when a config lists several ``datasets``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from emoclip.core.errors import EmoclipError
from emoclip.core.userfiles import parse_document, read_text
from emoclip.datasets.dataset import Dataset, few_shot, open_dataset, stratified_split
from emoclip.labels.taxonomy import Taxonomy
from emoclip.recipes import is_recipe_name, list_recipes, recipe_path

log = logging.getLogger("emoclip")

SECTIONS = {"method", "options", "taxonomy", "label_taxonomy", "data", "backbone", "train", "also", "eval_split",
            "name", "datasets"}  # datasets: several at once, each with its taxonomy (emoclip.training.unified)


def read_configs(paths: list[str | Path]) -> dict[str, Any]:
    """Several config files merged in order (e.g. a dataset's, then a method's)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge(merged, read_config(path))
    return merged


def read_config(path: str | Path | None) -> dict[str, Any]:
    """One config file's sections, checked; a bare name that is no file is a shipped recipe (emoclip.recipes)."""
    if path is None:
        return {}
    file = Path(path).expanduser()
    if not file.is_file() and is_recipe_name(str(path)):
        file = recipe_path(str(path))  # a shipped recipe by name: `--config ptdpc-paper`, `datasets: [emotionroi6]`
    if not file.is_file():
        raise EmoclipError(f"config file {path} does not exist; give a file or a recipe name "
                           f"({', '.join(list_recipes())})")
    suffix = ".toml" if file.suffix.lower() == ".toml" else ".yaml"
    data = parse_document(read_text(file, "config"), suffix, str(path), "config")
    if data is not None and not isinstance(data, dict):
        raise EmoclipError(f"config {path} is not a mapping of sections; use the sections "
                           f"{', '.join(sorted(SECTIONS))} (see the recipes in emoclip/recipes/)")
    unknown = sorted(map(str, set(data or {}) - SECTIONS))
    if unknown:
        raise EmoclipError(f"config {path}: unknown section {', '.join(unknown)}; known: {', '.join(sorted(SECTIONS))}")
    return data or {}


def merge(base: dict, override: dict) -> dict:
    """Recursive merge; ``None`` in the override means 'not given'."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def train_val(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """The data's own val split if it has one, else a stratified part carved from train."""
    train_part = data.split("train")
    if "val" in data.splits:
        return train_part, data.split("val")
    if fraction <= 0:
        return train_part, train_part.subset([], f"{data.name}:val")
    carved = stratified_split(train_part, [1 - fraction, fraction], ["train", "val"], seed)
    val = [i for i, s in enumerate(carved.samples) if s.split == "val"]
    if not val:
        log.warning("too few training images to hold out a validation part; the last epoch is kept")
        return train_part, train_part.subset([], f"{data.name}:val")
    keep = [i for i, s in enumerate(carved.samples) if s.split == "train"]
    return carved.subset(keep, f"{data.name}:train"), carved.subset(val, f"{data.name}:val")


def open_data(config: dict[str, Any]) -> Dataset:
    data_cfg = config.get("data") or {}
    return open_dataset(data_cfg.get("root"), data_cfg.get("split_file"), data_cfg.get("manifests") or (),
                        data_cfg.get("layout"), data_cfg.get("fold"), data_cfg.get("label_file"),
                        data_cfg.get("votes"), data_cfg.get("split_seed") or 0)


def feature_tensors(table, labels) -> tuple[torch.Tensor, torch.Tensor]:
    ok = torch.from_numpy(table.ok)
    return torch.from_numpy(table.features)[ok], torch.from_numpy(labels)[ok]


def few_shot_part(part: Dataset, shots: int, seed: int, label_taxonomy: Taxonomy) -> tuple[Dataset, dict]:
    return few_shot(part, shots, seed, label_of=lambda s: label_taxonomy.index(s.label))
