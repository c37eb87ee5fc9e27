"""The sections of an experiment config, and the one check every way of starting a run goes through.

An experiment is a mapping of sections (YAML/TOML files merged with ``--config``, flags, ``--set``,
a sweep grid's entries, or ``emoclip.train(...)``'s arguments)::

    method: ptdpc                  # a card of emoclip.schema.methods
    options: {weight: cos01}       # that method's Config
    taxonomy: emotionroi6          # a built-in name or a taxonomy file
    label_taxonomy: …              # the data's labels, when finer than the taxonomy
    data: {…}                      # DataOptions
    backbone: {…}                  # EncoderOptions (model, pretrained, precision, decode)
    train: {…}                     # TrainConfig, over the method's recipe
    also: [polarity]               # coarser levels scored on the test split
    eval_split: test
    name: my-run                   # the row label in tables
    datasets: [...]                # several datasets at once (emoclip.training.unified)

``check_experiment`` checks every section against its schema without importing torch, so a bad
value is refused in milliseconds with one line naming it and its valid values — before any image is
encoded — whether it came from a file, a flag or a grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from emoclip.core.errors import EmoclipError, short_repr, shorten
from emoclip.core.options import check_options, load_value
from emoclip.core.userfiles import parse_document, read_text
from emoclip.schema.data import DataOptions
from emoclip.schema.encoder import EncoderOptions
from emoclip.schema.methods import canonical_name, method_card
from emoclip.schema.training import TrainConfig

SECTIONS = {"method": "The method (`emoclip methods`).",
            "options": "The method's own options (`emoclip methods` lists them with their ranges).",
            "taxonomy": "The taxonomy the model predicts: a built-in name or a taxonomy file (default emotionroi6).",
            "label_taxonomy": "The taxonomy of the data's labels when finer than the model's.",
            "data": "Where the labelled data is (root, split_file, layout, fold, label_file, votes, …).",
            "backbone": "The CLIP backbone: model, pretrained, precision, decode.",
            "train": "The training recipe (epochs, lr, lr_grid, optimizer, scheduler, seed, shots, …).",
            "also": "Coarser levels to score on the test split (e.g. [polarity]).",
            "eval_split": "The split scored after training (default test).",
            "name": "The row label in `emoclip aggregate`.",
            "datasets": "Several datasets at once, each with its taxonomy (UGRIE's unified training)."}
BACKBONE_KEYS = tuple(f.name for f in dataclasses.fields(EncoderOptions) if f.name != "device")
TEXT_SECTIONS = ("method", "taxonomy", "label_taxonomy", "eval_split", "name")


def _mapping(config: dict, section: str, origin: str) -> dict:
    value = config.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EmoclipError(f"{origin}: section '{section}' must be a mapping of option: value, got "
                           f"{short_repr(value)}")
    return value


def check_experiment(config: dict[str, Any], origin: str = "config") -> dict[str, Any]:
    """``config`` with every section checked (numbers from words, the method's one name), or one
    ``EmoclipError`` line naming the bad value and what it may be."""
    if not isinstance(config, dict):
        raise EmoclipError(f"{origin} is not a mapping of sections; use the sections {', '.join(sorted(SECTIONS))}")
    unknown = sorted(map(str, set(config) - set(SECTIONS)))
    if unknown:
        raise EmoclipError(f"{origin}: unknown section {', '.join(unknown)}; known: {', '.join(sorted(SECTIONS))}")
    out = dict(config)
    for section in TEXT_SECTIONS:
        if config.get(section) is not None and not isinstance(config[section], str):
            raise EmoclipError(f"{origin}: '{section}' must be a text, got {short_repr(config[section])}")
    if config.get("also") is not None and not (isinstance(config["also"], list | tuple)
                                               and all(isinstance(a, str) for a in config["also"])):
        raise EmoclipError(f"{origin}: 'also' must be a list of taxonomy names, got {short_repr(config['also'])}")
    if config.get("datasets") is not None and not isinstance(config["datasets"], list):
        raise EmoclipError(f"{origin}: 'datasets' must be a list of mappings, got {short_repr(config['datasets'])}")
    data = _mapping(config, "data", origin)
    if data:
        out["data"] = check_options(DataOptions, data, "data", f"fix it in {origin}'s data section or its flag")
    backbone = _mapping(config, "backbone", origin)
    unknown = sorted(map(str, set(backbone) - set(BACKBONE_KEYS)))
    if unknown:
        raise EmoclipError(f"{origin}: the backbone section has no option {', '.join(unknown)}; known: "
                           f"{', '.join(BACKBONE_KEYS)}")
    if backbone:
        out["backbone"] = check_options(EncoderOptions, backbone, "backbone",
                                        f"fix it in {origin}'s backbone section or its flag")
    name = config.get("method")
    options = _mapping(config, "options", origin)
    train = _mapping(config, "train", origin)
    if name:
        card = method_card(name)
        out["method"] = canonical_name(name)
        out["options"] = check_options(card.config, options, f"method '{card.name}'")
        if card.trainable:
            TrainConfig.from_dict({**card.train_defaults, **{k: v for k, v in train.items() if v is not None}})
    return out


def read_config(path: str | Path | None) -> dict[str, Any]:
    """One experiment config file (YAML or TOML), its sections named but not yet checked; a bare name
    that is no file is a shipped recipe (``emoclip.recipes``: `--config ptdpc-paper`)."""
    from emoclip.recipes import is_recipe_name, list_recipes, recipe_path

    if path is None:
        return {}
    file = Path(path).expanduser()
    if not file.is_file() and is_recipe_name(str(path)):
        file = recipe_path(str(path))
    if not file.is_file():
        raise EmoclipError(f"config file {path} does not exist; give a file or a recipe name "
                           f"({', '.join(list_recipes())})")
    suffix = ".toml" if file.suffix.lower() == ".toml" else ".yaml"
    data = parse_document(read_text(file, "config"), suffix, str(path), "config")
    if data is not None and not isinstance(data, dict):
        raise EmoclipError(f"config {path} is not a mapping of sections; use the sections "
                           f"{', '.join(sorted(SECTIONS))} (see configs/)")
    unknown = sorted(map(str, set(data or {}) - set(SECTIONS)))
    if unknown:
        raise EmoclipError(f"config {path}: unknown section {', '.join(unknown)}; known: {', '.join(sorted(SECTIONS))}")
    return data or {}


def read_configs(paths: list[str | Path]) -> dict[str, Any]:
    """Several config files merged in order (e.g. a dataset's, then a method's)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge(merged, read_config(path))
    return merged


def merge(base: dict, override: dict) -> dict:
    """Recursive merge; ``None`` in the override means 'not given'."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def parse_sets(items: list[str] | tuple[str, ...], bare_section: str | None = "options") -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a nested override: ``n_ctx=4`` is a method option (``options``),
    ``train.epochs=2`` or ``data.root=DIR`` name their section. Values are YAML with numbers as users
    write them (``1e-6``)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise EmoclipError(f"--set needs KEY=VALUE, got '{shorten(str(item), 80)}'; write e.g. --set n_ctx=4 or "
                               "--set train.epochs=2")
        try:
            value = load_value(text)
        except Exception:  # yaml.YAMLError and its scanner errors
            raise EmoclipError(f"--set {shorten(str(item), 80)}: the value is not valid YAML; quote it") from None
        section, dot, option_name = key.partition(".")
        if not dot:
            if bare_section is None:
                raise EmoclipError(f"--set {key}: name the section, e.g. --set train.epochs=2, --set options.{key}=… "
                                   "or --set backbone.model=ViT-B-16")
            section, option_name = bare_section, key
        if section not in SECTIONS:
            raise EmoclipError(f"--set {key}: unknown section '{section}'; use one of {', '.join(sorted(SECTIONS))} "
                               "(e.g. train.epochs), or a bare method option")
        if option_name:
            overrides.setdefault(section, {})[option_name] = value
        else:
            overrides[section] = value
    return overrides
