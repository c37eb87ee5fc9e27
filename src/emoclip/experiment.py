"""A training experiment from a config file and command-line overrides, end to end.

Config (YAML or TOML), merged in the order method defaults → file → command line::

    method: ptdpc
    options: {weight: cos01, learn_sot: true}     # the method's own options
    taxonomy: emotionroi6
    data: {split_file: ../shared/datasets/emotion6/split_70_30.tsv, root: ../shared/datasets/emotion6/images}
    backbone: {model: ViT-B-32, pretrained: openai}
    train: {epochs: 50, lr: 0.002, optimizer: sgd}
    also: [polarity]

Several files merge in order (``--config configs/datasets/emotionroi6.yaml --config
configs/methods/ptdpc.yaml``); relative data paths are taken from the current folder.
``label_taxonomy`` trains on coarser classes than the data's labels (EmotionROI-2: emotion labels
mapped to polarity through the taxonomy's parents). ``run_experiment`` encodes the train
split once (feature cache), carves a stratified validation part from it (or uses the data's own
``val`` split), trains, then scores the best checkpoint on the test split into the same run folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from .atomic import atomic_write_text
from .backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_backbone
from .checkpoint import load_checkpoint
from .data.cache import FeatureCache, compute_features, default_cache_dir
from .data.dataset import Dataset, open_dataset, stratified_split
from .data.files import name_text
from .errors import EmoclipError, NothingReadableError
from .evaluate import evaluate
from .methods.base import create_method, list_methods
from .report import write_run
from .taxonomy import load_taxonomy
from .train import TrainConfig, train
from .userfiles import parse_document, read_text

log = logging.getLogger("emoclip")
SECTIONS = {"method", "options", "taxonomy", "label_taxonomy", "data", "backbone", "train", "also", "eval_split",
            "name"}


def read_configs(paths: list[str | Path]) -> dict[str, Any]:
    """Several config files merged in order (e.g. a dataset's, then a method's)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge(merged, read_config(path))
    return merged


def read_config(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    file = Path(path).expanduser()
    if not file.is_file():
        raise EmoclipError(f"config file {path} does not exist")
    suffix = ".toml" if file.suffix.lower() == ".toml" else ".yaml"
    data = parse_document(read_text(file, "config"), suffix, str(path), "config")
    if data is not None and not isinstance(data, dict):
        raise EmoclipError(f"config {path} is not a mapping of sections; use the sections "
                           f"{', '.join(sorted(SECTIONS))} (see configs/)")
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


def _train_val(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
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


def _tensors(table, labels) -> tuple[torch.Tensor, torch.Tensor]:
    ok = torch.from_numpy(table.ok)
    return torch.from_numpy(table.features)[ok], torch.from_numpy(labels)[ok]


def run_experiment(config: dict[str, Any], out: str | Path, device: str = "auto", cache_dir: str | None = None,
                   no_cache: bool = False, resume: bool = False, progress: bool | None = None) -> dict:
    """Train the configured method and evaluate it; returns the summary written to ``out/summary.json``."""
    out = Path(out)
    name = config.get("method")
    if not name:
        raise EmoclipError(f"say which method to train (--method or 'method:' in --config); one of "
                           f"{', '.join(list_methods())}")
    methods = list_methods()
    if name not in methods:
        raise EmoclipError(f"unknown method '{name}'; `emoclip methods` lists them: {', '.join(methods)}")
    train_options = merge(methods[name].train_defaults, config.get("train") or {})
    train_config = TrainConfig.from_dict(train_options)
    taxonomy = load_taxonomy(config.get("taxonomy") or "emotionroi6")
    data_cfg = config.get("data") or {}
    data = open_dataset(data_cfg.get("root"), data_cfg.get("split_file"), data_cfg.get("manifests") or (),
                        data_cfg.get("layout"), data_cfg.get("fold"))
    label_taxonomy = load_taxonomy(config.get("label_taxonomy") or taxonomy.name)
    data.label_indices(label_taxonomy)
    to_model = (label_taxonomy.mapping_to(taxonomy.name) if label_taxonomy.name != taxonomy.name
                else None)  # e.g. EmotionROI-2: emotion labels trained as polarity

    def labels_of(part: Dataset):
        indices = part.label_indices(label_taxonomy)
        return indices if to_model is None else to_model[indices]

    train_set, val_set = _train_val(data, train_config.val_fraction, train_config.seed)

    backbone_cfg = config.get("backbone") or {}
    backbone = load_backbone(backbone_cfg.get("model") or DEFAULT_MODEL,
                             backbone_cfg.get("pretrained") or DEFAULT_PRETRAINED, device)
    cache = None if no_cache else FeatureCache(cache_dir or default_cache_dir(), backbone)
    train_table = compute_features(backbone, train_set.paths, cache)
    val_table = compute_features(backbone, val_set.paths, cache)
    for table in (train_table, val_table):
        for i, reason in table.errors.items():
            log.warning("skipping %s: %s", name_text(table.paths[i]), reason)
    if len(train_table.ok) and not train_table.ok.any():
        raise NothingReadableError(f"none of the {len(train_table.ok)} training images could be read (first: "
                                   f"{name_text(train_table.paths[0])}: {train_table.errors[0]}); nothing to train on")
    lost = {"train": len(train_table.errors), "val": len(val_table.errors)}
    listed = {"train": len(train_table.paths), "val": len(val_table.paths)}
    train_xy = _tensors(train_table, labels_of(train_set))
    val_xy = _tensors(val_table, labels_of(val_set))

    method = create_method(name, backbone, taxonomy, config.get("options") or {})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump({**config, "train": asdict(train_config)}, sort_keys=False))
    meta = {"data": {"source": data.source, "train": len(train_xy[1]), "val": len(val_xy[1])},
            "cache": {"hits": train_table.hits + val_table.hits, "misses": train_table.misses + val_table.misses}}
    training = train(method, train_xy, val_xy, train_config, out, resume=resume, progress=progress, extra_meta=meta,
                     train_paths=[str(train_table.paths[i]) for i in range(len(train_table.paths))
                                  if train_table.ok[i]])
    summary = {"method": name, "training": {k: v for k, v in training.items() if k != "history"}, **meta,
               "lost": lost, "listed": listed}

    eval_split = config.get("eval_split", "test")
    if eval_split and eval_split in data.splits:
        best = load_checkpoint(out, backbone)
        test = data.split(eval_split)
        result = evaluate(backbone, best, test, label_taxonomy, config.get("also") or (), cache)
        run = {"name": config.get("name") or name, "method": best.describe(), "seed": train_config.seed,
               "dataset": test.name, "split": eval_split, "dataset_label": data.name, "checkpoint": str(out),
               "backbone": backbone.identity(), "taxonomy": taxonomy.name, "label_taxonomy": label_taxonomy.name,
               "training": summary["training"]}
        write_run(result, run, out)
        lost["test"], listed["test"] = result.metrics["n_failed"], len(test)
        summary["test"] = {"accuracy": result.metrics["accuracy"], "macro_f1": result.metrics["macro_f1"],
                           **{f"{lvl}_accuracy": m["accuracy"] for lvl, m in result.metrics["coarse"].items()}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
