"""A training experiment from a config file and command-line overrides, end to end.

Config (YAML or TOML), merged in the order method defaults → file → command line::

    method: ptdpc
    options: {weight: cos01, learn_sot: true}     # the method's own options
    taxonomy: emotionroi6
    data: {split_file: ../shared/datasets/emotion6/split_70_30.tsv, root: ../shared/datasets/emotion6/images}
    # data may also say: layout, fold, label_file, votes, split_seed (see data/dataset.py)
    backbone: {model: ViT-B-32, pretrained: openai}
    train: {epochs: 50, lr: 0.002, optimizer: sgd}    # plus shots, target, lr_grid, monitor, early_stopping
    also: [polarity]

Several files merge in order (``--config configs/datasets/emotionroi6.yaml --config
configs/methods/ptdpc-paper.yaml``); relative data paths are taken from the current folder. Every
section is checked against the typed schema (``emoclip.schema.experiment.check_experiment``) before
anything loads: a bad value is one line naming it and its valid values.
``label_taxonomy`` trains on coarser classes than the data's labels (EmotionROI-2: emotion labels
mapped to polarity through the taxonomy's parents). ``run_experiment`` encodes the train
split once (feature cache), carves a stratified validation part from it (or uses the data's own
``val`` split), trains, then scores the best checkpoint on the test split into the same run folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emoclip.core.atomic import atomic_write_bytes, atomic_write_text
from emoclip.core.errors import EmoclipError, NothingReadableError, TaxonomyError
from emoclip.core.files import name_text
from emoclip.core.strict_json import dumps
from emoclip.datasets.dataset import Dataset
from emoclip.encoder.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_backbone
from emoclip.encoder.cache import FeatureCache, compute_features, default_cache_dir
from emoclip.evaluation.aggregate import run_setting
from emoclip.evaluation.evaluate import evaluate
from emoclip.evaluation.report import write_run
from emoclip.labels.taxonomy import Taxonomy, load_taxonomy
from emoclip.methods.base import create_method
from emoclip.methods.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint
from emoclip.schema.encoder import EXACT
from emoclip.schema.experiment import SECTIONS, check_experiment, merge, read_config, read_configs
from emoclip.schema.methods import ZERO_SHOT, ZeroShotConfig, method_card, method_names
from emoclip.schema.record import RunRecord
from emoclip.training.common import feature_tensors, few_shot_part, open_data, train_val
from emoclip.training.trainer import TrainConfig, train
from emoclip.training.unified import run_unified

log = logging.getLogger("emoclip")
__all__ = ["SECTIONS", "ZERO_SHOT", "merge", "read_config", "read_configs", "run_experiment"]




def _load_backbone(config: dict[str, Any], device: str):
    """The configured backbone; exact (fp32, full decoding) unless the config asks otherwise."""
    backbone_cfg = config.get("backbone") or {}
    return load_backbone(backbone_cfg.get("model") or DEFAULT_MODEL,
                         backbone_cfg.get("pretrained") or DEFAULT_PRETRAINED, device,
                         precision=backbone_cfg.get("precision") or EXACT.precision,
                         decode=backbone_cfg.get("decode") or EXACT.decode)


def run_zero_shot(config: dict[str, Any], out: str | Path, device: str = "auto", cache_dir: str | None = None,
                  no_cache: bool = False) -> dict:
    """The first row of every table: zero-shot CLIP scored like a trained run (``method: zero-shot``).

    ``options`` may set ``templates`` and ``synonyms``; nothing is trained, so the seed and few-shot
    settings change nothing and are recorded as given.
    """
    from emoclip.core.options import build
    from emoclip.methods.zeroshot import ZeroShotClassifier

    out = Path(out)
    options = build(ZeroShotConfig, config.get("options"), f"method '{ZERO_SHOT}'")
    taxonomy = load_taxonomy(config.get("taxonomy") or "emotionroi6")
    label_taxonomy = load_taxonomy(config.get("label_taxonomy") or taxonomy)
    data = open_data(config)
    eval_split = config.get("eval_split", "test")
    test = data.split(eval_split)
    test.label_indices(label_taxonomy)
    backbone = _load_backbone(config, device)
    cache = None if no_cache else FeatureCache(cache_dir or default_cache_dir(), backbone)
    classifier = ZeroShotClassifier(backbone, taxonomy, options.templates, options.synonyms)
    result = evaluate(backbone, classifier, test, label_taxonomy, config.get("also") or (), cache)
    train_cfg = config.get("train") or {}
    run = RunRecord(name=config.get("name") or ZERO_SHOT, method=classifier.describe(), seed=train_cfg.get("seed", 0),
                    dataset=test.name, split=eval_split, dataset_label=data.name, data_source=data.source,
                    fold=data.extra.get("fold"), shots=0, target="labels", backbone=backbone.record(),
                    taxonomy=taxonomy.name, label_taxonomy=label_taxonomy.name,
                    setting=run_setting(classifier.describe(), None, config.get("data"), data.source, 0, "labels",
                                        taxonomy.name, label_taxonomy.name, backbone.identity(),
                                        eval_split=eval_split)).to_dict()
    write_run(result, run, out)
    summary = {"method": ZERO_SHOT, "training": {"epochs": 0},
               "test": {"accuracy": result.metrics["accuracy"], "macro_f1": result.metrics["macro_f1"]}}
    atomic_write_text(out / "summary.json", dumps(summary, indent=2) + "\n")
    return summary


def vote_targets(part: Dataset, label_taxonomy: Taxonomy, model_taxonomy: Taxonomy) -> np.ndarray:
    """The annotators' vote distributions over the model's classes (N × C; all-zero rows: no votes).

    Vote columns resolve through the label taxonomy (names, aliases, synonyms) and, when the model
    is coarser, add up into their parents. 'neutral' was dropped when the votes were read (the other
    emotions renormalised), so an all-neutral image has no target and is left out of training.
    """
    if part.votes is None:
        raise EmoclipError(f"--target votes needs vote distributions; dataset {part.name} has none: give --votes "
                           "FILE (a table of image and one column per emotion)")
    columns = []
    for name in part.vote_classes:
        try:
            columns.append(label_taxonomy.index(name))
        except TaxonomyError:
            raise EmoclipError(f"vote column '{name}' is not a class of taxonomy '{label_taxonomy.name}' "
                               f"({', '.join(label_taxonomy.names)}); rename the column or pass the right "
                               "--label-taxonomy") from None
    to_model = (np.arange(len(label_taxonomy)) if label_taxonomy.name == model_taxonomy.name
                else label_taxonomy.mapping_to(model_taxonomy.name))
    targets = np.zeros((len(part), len(model_taxonomy)), dtype=np.float32)
    for j, cls in enumerate(columns):
        targets[:, to_model[cls]] += part.votes[:, j]
    return targets


FINISHED = "summary.json"  # written last: its presence means the run in the folder finished
# What a run writes into its folder (and `--overwrite` removes first); other files are the user's and stay.
RUN_FILES = ("summary.json", "metrics.json", "config.yaml", "log.jsonl", "last.safetensors", "model.safetensors",
             "model.json", "predictions.csv", "report.md", "confusion.png", "per_class.png")


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A folder holding a finished run is never silently replaced; ``overwrite`` clears the run's own files
    (stale training state of another method included) so nothing of the old run mixes into the new one."""
    if resume and overwrite:
        raise EmoclipError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    if overwrite and out.is_dir():
        import shutil

        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for sub in [*out.glob("lr-*"), out / "mistakes"]:
            if sub.is_dir() and (sub.name == "mistakes" or (sub / "log.jsonl").exists()
                                 or (sub / "last.safetensors").exists() or not any(sub.iterdir())):
                shutil.rmtree(sub)
        return
    if not resume and (out / FINISHED).is_file():
        raise EmoclipError(f"{out} holds a finished run ({FINISHED}); train into another --out, add --overwrite to "
                           "replace it, or --resume to continue it")


def run_experiment(config: dict[str, Any], out: str | Path, device: str = "auto", cache_dir: str | None = None,
                   no_cache: bool = False, resume: bool = False, progress: bool | None = None,
                   overwrite: bool = False) -> dict:
    """Train the configured method and evaluate it; returns the summary written to ``out/summary.json``.

    ``train.shots: K`` keeps K training images per class (seeded by ``train.seed``) and, as CoOp does,
    min(K, 4) per class of the validation part; ``train.target: votes`` trains on the vote
    distributions; ``train.lr_grid`` trains once per learning rate (in ``out/lr-<value>/``) and keeps
    the best on validation, as the PT-DPC paper's protocol needs.
    """
    out = Path(out)
    check_run_folder(out, resume, overwrite)
    if not config.get("method"):
        raise EmoclipError(f"say which method to train (--method or 'method:' in --config); one of "
                           f"{', '.join(method_names())}")
    config = check_experiment(config)  # every section against the schema, before anything loads
    name = config["method"]
    card = method_card(name)
    if not card.trainable:
        return run_zero_shot(config, out, device, cache_dir, no_cache)
    from emoclip.methods.base import list_methods

    list_methods()[name].preflight(config.get("options") or {})
    if config.get("datasets"):
        return run_unified(config, out, device, cache_dir, no_cache, resume, progress)
    train_options = merge(card.train_defaults, config.get("train") or {})
    train_config = TrainConfig.from_dict(train_options)
    taxonomy = load_taxonomy(config.get("taxonomy") or "emotionroi6")
    data = open_data(config)
    label_taxonomy = load_taxonomy(config.get("label_taxonomy") or taxonomy)  # a taxonomy file stays that file
    data.label_indices(label_taxonomy)
    if label_taxonomy.name != taxonomy.name:
        label_taxonomy.find_ancestor(taxonomy.name)  # the labels must map into the model's classes
    to_model = (label_taxonomy.mapping_to(taxonomy.name) if label_taxonomy.name != taxonomy.name
                else None)  # e.g. EmotionROI-2: emotion labels trained as polarity

    def labels_of(part: Dataset):
        indices = part.label_indices(label_taxonomy)
        return indices if to_model is None else to_model[indices]

    train_set, val_set = train_val(data, train_config.val_fraction, train_config.seed)
    data_meta: dict[str, Any] = {"source": data.source, "name": data.name, "fold": data.extra.get("fold"),
                                 "layout": data.extra.get("layout")}
    if train_config.shots:
        train_set, data_meta["few_shot"] = few_shot_part(train_set, train_config.shots, train_config.seed,
                                                     label_taxonomy)
        if len(val_set):
            val_set, data_meta["few_shot_val"] = few_shot_part(val_set, min(train_config.shots, 4), train_config.seed,
                                                           label_taxonomy)

    backbone = _load_backbone(config, device)  # exact unless asked
    cache = None if no_cache else FeatureCache(cache_dir or default_cache_dir(), backbone)
    train_table = compute_features(backbone, train_set.paths, cache)
    val_table = compute_features(backbone, val_set.paths, cache)
    for table in (train_table, val_table):
        for i, reason in table.errors.items():
            log.warning("skipping %s: %s", name_text(str(table.paths[i])), reason)
    if len(train_table.ok) and not train_table.ok.any():
        raise NothingReadableError(f"none of the {len(train_table.ok)} training images could be read (first: "
                                   f"{name_text(str(train_table.paths[0]))}: {train_table.errors[0]}); "
                                   "nothing to train on")
    lost = {"train": len(train_table.errors), "val": len(val_table.errors)}
    listed = {"train": len(train_table.paths), "val": len(val_table.paths)}
    train_xy = feature_tensors(train_table, labels_of(train_set))
    keep_paths = [str(train_table.paths[i]) for i in range(len(train_table.paths)) if train_table.ok[i]]
    if train_config.target == "votes":
        soft = torch.from_numpy(vote_targets(train_set, label_taxonomy, taxonomy))[torch.from_numpy(train_table.ok)]
        voted = soft.sum(1) > 0
        data_meta["votes"] = {"trained_on": int(voted.sum()), "left_out_without_votes": int((~voted).sum()),
                              "note": train_set.vote_note}
        train_xy = (train_xy[0][voted], soft[voted] / soft[voted].sum(1, keepdim=True))
        keep_paths = [p for p, v in zip(keep_paths, voted.tolist(), strict=True) if v]
        if not len(train_xy[1]):
            raise EmoclipError("--target votes: no training image has votes (all neutral or not in the vote table)")
    val_xy = feature_tensors(val_table, labels_of(val_set))

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump({**config, "train": asdict(train_config)}, sort_keys=False))
    meta: dict[str, Any] = {"data": {**data_meta, "train": len(train_xy[1]), "val": len(val_xy[1])},
            "cache": {"hits": train_table.hits + val_table.hits, "misses": train_table.misses + val_table.misses}}

    configured: dict[str, Any] = {}

    def fit(run_config: TrainConfig, folder: Path) -> dict:
        method = create_method(name, backbone, taxonomy, config.get("options") or {}, seed=run_config.seed)
        configured.setdefault("method", method.describe())  # as configured, before fitting sets anything
        return train(method, train_xy, val_xy, run_config, folder, resume=resume, progress=progress,
                     extra_meta=meta, train_paths=keep_paths)

    if train_config.lr_grid and not len(val_xy[1]):  # nothing to choose on: one rate, said and recorded
        log.warning("train.lr_grid %s picks the learning rate on validation and this run has no validation images; "
                    "training once at lr %g (use --val-fraction above 0 for the grid)", train_config.lr_grid,
                    train_config.lr)
        meta["lr_grid_skipped"] = f"no validation images: trained once at lr {train_config.lr:g}"
        train_config = replace(train_config, lr_grid=None)
    training = _select_lr(fit, train_config, out) if train_config.lr_grid else fit(train_config, out)
    summary = {"method": name, "training": {k: v for k, v in training.items() if k != "history"}, **meta,
               "lost": lost, "listed": listed}

    eval_split = config.get("eval_split", "test")
    if eval_split and eval_split in data.splits:
        best = load_checkpoint(out, backbone)
        test = data.split(eval_split)
        result = evaluate(backbone, best, test, label_taxonomy, config.get("also") or (), cache)
        run = RunRecord(name=config.get("name") or name, method=best.describe(), seed=train_config.seed,
                        dataset=test.name, split=eval_split, dataset_label=data.name, checkpoint=str(out),
                        data_source=data.source, fold=data.extra.get("fold"), shots=train_config.shots,
                        target=train_config.target, backbone=backbone.record(), taxonomy=taxonomy.name,
                        label_taxonomy=label_taxonomy.name, training=summary["training"],
                        setting=run_setting(configured["method"], asdict(train_config), config.get("data"),
                                            data.source, train_config.shots, train_config.target, taxonomy.name,
                                            label_taxonomy.name, backbone.identity(), training.get("inputs"),
                                            eval_split)).to_dict()
        write_run(result, run, out)
        lost["test"], listed["test"] = result.metrics["n_failed"], len(test)
        summary["test"] = {"accuracy": result.metrics["accuracy"], "macro_f1": result.metrics["macro_f1"],
                           **{f"{lvl}_accuracy": m["accuracy"] for lvl, m in result.metrics["coarse"].items()}}
        if result.metrics.get("distribution"):
            summary["test"]["kl_divergence"] = result.metrics["distribution"]["kl_divergence"]
    atomic_write_text(out / "summary.json", dumps(summary, indent=2) + "\n")
    return summary


def _select_lr(fit, config: TrainConfig, out: Path) -> dict:
    """One run per learning rate of ``lr_grid`` (``out/lr-<value>/``); the best on validation is copied to ``out``.

    "Best" is the recipe's ``monitor`` at each run's best epoch (highest accuracy or lowest loss), ties
    going to the earlier lr of the grid.
    """
    results: dict[float, dict] = {}
    for lr in config.lr_grid or []:
        results[lr] = fit(replace(config, lr=float(lr), lr_grid=None), out / f"lr-{lr:g}")

    def score(lr: float) -> float:
        value = results[lr].get("best_value")
        value = results[lr]["val_accuracy"] if value is None else value
        return -value if config.monitor == "val_loss" else value
    chosen = max(config.lr_grid or [], key=score)
    for file in (META_FILE, WEIGHTS_FILE, "log.jsonl"):
        source = out / f"lr-{chosen:g}" / file
        if source.is_file():
            atomic_write_bytes(out / file, source.read_bytes())
    meta = json.loads((out / META_FILE).read_text())
    meta["lr_selection"] = {"chosen": chosen, "monitor": config.monitor,
                            "by_lr": {f"{lr:g}": results[lr].get("best_value", results[lr]["val_accuracy"])
                                      for lr in results}}
    atomic_write_text(out / META_FILE, dumps(meta, indent=2) + "\n")
    return {**results[chosen], "lr": chosen, "lr_selection": meta["lr_selection"]}
