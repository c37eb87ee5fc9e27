"""Unified training: one model, several datasets with different emotion taxonomies, one run.

UGRIE's claim is "one for all": a single model trained on datasets labelled under distinct emotion
models at once, predicting under each. A config lists the datasets; each is a dataset config file
(the ones in ``configs/datasets/``) or an inline mapping with the same keys::

    method: ugrie
    datasets:
      - configs/datasets/emotionroi6.yaml            # taxonomy, data, also
      - name: emotionroi2
        taxonomy: polarity
        label_taxonomy: emotionroi6
        data: {split_file: ../shared/datasets/emotion6/split_70_30.tsv, root: ../shared/datasets/emotion6/images}
    train: {epochs: 10}

Every dataset is opened, checked, labelled and split exactly as a single-dataset run does it (the
shared ``common.open_data``, ``train_val`` and, with ``train.shots``, ``few_shot_part``), its
images encoded through the one feature cache, and its classes become targets of the method's own
task (``method.target_index``). The training parts are concatenated, so the trainer's per-epoch
shuffle mixes the datasets in every epoch; model selection uses every dataset's validation part,
each scored under its own taxonomy. The best checkpoint is then scored on each dataset's test
split into ``out/<dataset name>/``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emoclip.core.atomic import atomic_write_text
from emoclip.core.errors import EmoclipError
from emoclip.core.strict_json import dumps
from emoclip.datasets.dataset import Dataset
from emoclip.encoder.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_backbone
from emoclip.encoder.cache import FeatureCache, compute_features, default_cache_dir
from emoclip.evaluation.aggregate import run_setting
from emoclip.evaluation.evaluate import evaluate
from emoclip.evaluation.report import write_run
from emoclip.labels.taxonomy import Taxonomy, load_taxonomy
from emoclip.methods.base import create_method, list_methods
from emoclip.methods.checkpoint import classifier_for, load_checkpoint
from emoclip.training.common import feature_tensors, few_shot_part, merge, open_data, read_config, train_val
from emoclip.training.trainer import TrainConfig, train

log = logging.getLogger("emoclip")
DATASET_KEYS = {"name", "taxonomy", "label_taxonomy", "data", "also", "eval_split"}


@dataclass
class DatasetPart:
    """One dataset of a unified run: its taxonomy, labels and train/validation parts."""

    name: str
    taxonomy: Taxonomy          # the model's task for this dataset
    label_taxonomy: Taxonomy    # the labels' (e.g. emotion labels trained as polarity)
    data: Dataset
    train: Dataset
    val: Dataset
    also: list[str]
    eval_split: str | None
    entry_data: dict | None = None  # the data section as configured (the run's setting)

    def labels(self, part: Dataset) -> np.ndarray:
        indices = part.label_indices(self.label_taxonomy)
        if self.label_taxonomy.name == self.taxonomy.name:
            return indices
        return self.label_taxonomy.mapping_to(self.taxonomy.name)[indices]


def dataset_entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``datasets`` list as mappings: files read (relative paths from the current folder), names unique."""
    raw = config.get("datasets")
    if not isinstance(raw, list) or not raw:
        raise EmoclipError("'datasets' must list dataset config files or mappings with taxonomy and data")
    entries, names = [], set()
    for item in raw:
        entry = dict(read_config(item)) if isinstance(item, str | Path) else dict(item or {})
        origin = str(item) if isinstance(item, str | Path) else "datasets entry"
        unknown = sorted(set(entry) - DATASET_KEYS)
        if unknown:
            raise EmoclipError(f"{origin}: unknown key {', '.join(unknown)} for a dataset of a unified run; "
                               f"known: {', '.join(sorted(DATASET_KEYS))}")
        if not entry.get("taxonomy") or not entry.get("data"):
            raise EmoclipError(f"{origin}: every dataset of a unified run needs its 'taxonomy' and 'data'")
        name = str(entry.get("name") or (Path(item).stem if isinstance(item, str | Path) else entry["taxonomy"]))
        while name in names:
            name += "+"
        names.add(name)
        entries.append({**entry, "name": name})
    return entries


def open_part(entry: dict[str, Any], train_config: TrainConfig) -> DatasetPart:
    """A dataset opened, labelled, split and (``train.shots``) few-shot sampled as a single-dataset run does."""
    data = open_data(entry)
    taxonomy = load_taxonomy(entry["taxonomy"])
    label_taxonomy = load_taxonomy(entry.get("label_taxonomy") or taxonomy.name)
    data.label_indices(label_taxonomy)  # unknown labels fail before any encoding
    if label_taxonomy.name != taxonomy.name:
        label_taxonomy.mapping_to(taxonomy.name)  # fails early when the labels cannot map to the task
    train_part, val_part = train_val(data, train_config.val_fraction, train_config.seed)
    if train_config.shots:  # the few-shot protocol every method shares, applied to each dataset
        train_part, _ = few_shot_part(train_part, train_config.shots, train_config.seed, label_taxonomy)
        if len(val_part):
            val_part, _ = few_shot_part(val_part, min(train_config.shots, 4), train_config.seed, label_taxonomy)
    return DatasetPart(entry["name"], taxonomy, label_taxonomy, data, train_part, val_part,
                       list(entry.get("also") or []), entry.get("eval_split", "test"), entry.get("data"))


def run_unified(config: dict[str, Any], out: str | Path, device: str = "auto", cache_dir: str | None = None,
                no_cache: bool = False, resume: bool = False, progress: bool | None = None) -> dict:
    """Train one model on every listed dataset at once, then score it on each dataset's test split."""
    out = Path(out)
    name = config["method"]
    method_cls = list_methods()[name]
    if not method_cls.multi_taxonomy:
        multi = [n for n, c in list_methods().items() if c.multi_taxonomy]
        raise EmoclipError(f"method {name} trains on one taxonomy; several datasets with their own taxonomies "
                           f"need a method that unifies them: {', '.join(multi)}")
    train_config = TrainConfig.from_dict(merge(method_cls.train_defaults, config.get("train") or {}))
    if train_config.target != "labels" or train_config.lr_grid:
        raise EmoclipError("a unified run trains on labels with one learning rate; leave out train.target and "
                           "train.lr_grid (or train each dataset on its own)")
    parts = [open_part(entry, train_config) for entry in dataset_entries(config)]

    backbone_cfg = config.get("backbone") or {}
    backbone = load_backbone(backbone_cfg.get("model") or DEFAULT_MODEL,
                             backbone_cfg.get("pretrained") or DEFAULT_PRETRAINED, device,
                             precision=backbone_cfg.get("precision") or "fp32")  # exact unless asked
    cache = None if no_cache else FeatureCache(cache_dir or default_cache_dir(), backbone)
    tasks = [p.taxonomy.to_dict() for p in parts]
    method = create_method(name, backbone, parts[0].taxonomy, {**(config.get("options") or {}), "taxonomies": tasks},
                           seed=train_config.seed)
    configured = method.describe()  # as configured, before training

    xs, ys, vxs, vys, paths, counts, hits, misses = [], [], [], [], [], {}, 0, 0
    for part in parts:
        tables = compute_features(backbone, part.train.paths, cache), compute_features(backbone, part.val.paths, cache)
        for table in tables:
            hits, misses = hits + table.hits, misses + table.misses
            for i, reason in table.errors.items():
                log.warning("skipping %s: %s", table.paths[i], reason)
        (x, y) = feature_tensors(tables[0], part.labels(part.train))
        (vx, vy) = feature_tensors(tables[1], part.labels(part.val))
        xs.append(x)
        ys.append(method.target_index(part.taxonomy, y))
        vxs.append(vx)
        vys.append(method.target_index(part.taxonomy, vy))
        paths += [str(p) for p, ok in zip(tables[0].paths, tables[0].ok, strict=True) if ok]
        counts[part.name] = {"source": part.data.source, "taxonomy": part.taxonomy.name, "train": len(y),
                             "val": len(vy), "shots": train_config.shots or 0}

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump({**config, "train": asdict(train_config)}, sort_keys=False))
    meta = {"data": {"datasets": counts, "train": sum(len(y) for y in ys), "val": sum(len(y) for y in vys)},
            "cache": {"hits": hits, "misses": misses}}
    training = train(method, (torch.cat(xs), torch.cat(ys)), (torch.cat(vxs), torch.cat(vys)), train_config, out,
                     resume=resume, progress=progress, extra_meta=meta, train_paths=paths)
    summary: dict[str, Any] = {"method": name, "training": {k: v for k, v in training.items() if k != "history"},
                               **meta, "test": {}}

    best = load_checkpoint(out, backbone)
    for part in parts:
        if not part.eval_split or part.eval_split not in part.data.splits:
            continue
        test = part.data.split(part.eval_split)
        result = evaluate(backbone, classifier_for(best, part.taxonomy), test, part.label_taxonomy, part.also, cache)
        # the same record fields as a single-dataset run: a 2-shot and a full run never share a cell
        run = {"name": config.get("name") or name, "method": best.describe(), "seed": train_config.seed,
               "dataset": test.name, "split": part.eval_split, "dataset_label": part.name, "checkpoint": str(out),
               "data_source": part.data.source, "fold": part.data.extra.get("fold"), "shots": train_config.shots,
               "target": train_config.target, "backbone": backbone.record(), "taxonomy": part.taxonomy.name,
               "label_taxonomy": part.label_taxonomy.name, "training": summary["training"],
               "setting": {**run_setting(configured, asdict(train_config), part.entry_data, part.data.source,
                                         train_config.shots, train_config.target, part.taxonomy.name,
                                         part.label_taxonomy.name, backbone.identity(), training.get("inputs"),
                                         part.eval_split),
                           "unified_with": sorted(p.name for p in parts)}}
        write_run(result, run, out / part.name)
        summary["test"][f"{part.name}_accuracy"] = result.metrics["accuracy"]
        for level, metrics in result.metrics["coarse"].items():
            summary["test"][f"{part.name}_{level}_accuracy"] = metrics["accuracy"]
    atomic_write_text(out / "summary.json", dumps(summary, indent=2) + "\n")
    return summary
