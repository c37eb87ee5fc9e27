"""What a single-dataset run and a unified run share: reading and merging config files, opening the
configured data, the train/validation carve, the few-shot subset and the feature tensors.

It sits below both ``experiment`` and ``unified`` so that neither imports the other's internals
(``experiment`` dispatches to ``unified`` when a config lists several ``datasets``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from emoclip.datasets.dataset import Dataset, few_shot, open_dataset, stratified_split
from emoclip.labels.taxonomy import Taxonomy
from emoclip.schema.experiment import SECTIONS, merge, read_config, read_configs

log = logging.getLogger("emoclip")

# The config sections and their reading live with the schema (one definition); re-exported here for
# the runners that read configs.
__all__ = ["SECTIONS", "feature_tensors", "few_shot_part", "merge", "open_data", "read_config", "read_configs",
           "train_val"]


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
