"""The public Python API: factories in the style of open_clip's ``create_model_and_transforms`` and
``timm.create_model``, over the same code path and defaults as the CLI.

::

    import emoclip

    tagger = emoclip.create_tagger(model="ViT-B-32", pretrained="openai", taxonomy="mikels8")
    for row in tagger.tag_paths(["photos/"]):          # files, folders, globs, tar shards, lists
        print(row.path, row.label, row.probability)

    summary = emoclip.train("ptdpc", out="runs/ptdpc", root="emotion6/images",
                            split_file="emotion6/split_70_30.tsv", taxonomy="emotionroi6",
                            model="ViT-B-32", pretrained="openai", epochs=2, lr=0.01)
    metrics = emoclip.evaluate("runs/ptdpc", root="emotion6/images", split_file="emotion6/split_70_30.tsv")
    method = emoclip.load_checkpoint("runs/ptdpc")
    emoclip.list_methods(), emoclip.list_recipes(), emoclip.list_taxonomies()

Why these and not the modules behind them: each factory takes only the options the typed schema
declares (``emoclip.schema``) and checks them the same way (one ``EmoclipError`` line naming a bad
value and its valid values), with the same defaults as the CLI: tagging defaults
(``schema.encoder.TAGGING``: auto precision, draft decoding) for ``create_tagger``, exact ones
(``EXACT``: fp32, full decoding) for ``train``/``evaluate``/``load_checkpoint``. ``emoclip train``
itself builds its experiment with ``experiment_config`` and runs it with ``run``; ``emoclip
predict`` builds its tagger with the same ``build_tagger`` as ``create_tagger``.

Listing functions import no torch: ``list_methods()`` reads the method cards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoclip.core.errors import EmoclipError
from emoclip.schema.data import DataOptions
from emoclip.schema.encoder import EXACT, TAGGING, EncoderOptions
from emoclip.schema.experiment import check_experiment, merge, parse_sets, read_configs
from emoclip.schema.methods import MethodCard, list_method_cards, method_card
from emoclip.schema.training import TrainConfig

if TYPE_CHECKING:
    from emoclip.methods.base import Method
    from emoclip.tagging.tagger import Tagger

__all__ = ["create_tagger", "evaluate", "experiment_config", "list_methods", "list_recipes", "list_taxonomies",
           "load_checkpoint", "run", "train"]

_DATA = [f.name for f in dataclasses.fields(DataOptions)]
_TRAIN = [f.name for f in dataclasses.fields(TrainConfig)]
_BACKBONE = [f.name for f in dataclasses.fields(EncoderOptions) if f.name != "device"]


# -- listings (no torch) ----------------------------------------------------------------------------
def list_methods() -> dict[str, MethodCard]:
    """Every method's card by name: summary, options (``card.options()``: type, default, range, help),
    capabilities and paper recipe. Imports no torch."""
    return list_method_cards()


def list_recipes() -> dict[str, Path]:
    """The shipped training recipes by name (``emoclip train --recipe NAME``)."""
    from emoclip.recipes import list_recipes as recipes

    return recipes()


def list_taxonomies() -> list[str]:
    """The built-in taxonomies' names (``load_taxonomy(name)`` reads one; files work too)."""
    from emoclip.labels.taxonomy import builtin_taxonomies

    return builtin_taxonomies()


# -- tagging ------------------------------------------------------------------------------------------
def create_tagger(model: str | None = TAGGING.model, pretrained: str | None = TAGGING.pretrained,
                  taxonomy: str | None = None, checkpoint: str | Path | None = None,
                  precision: str = TAGGING.precision, decode: str = TAGGING.decode, *,
                  labels: Sequence[str] | None = None, device: str = TAGGING.device, **options: Any) -> Tagger:
    """A ready ``Tagger``: zero-shot over ``taxonomy`` (or your ``labels``), or a trained ``checkpoint``.

    ``options``: the other ``TaggerConfig`` fields (``templates``, ``synonyms``, ``top_k``, ``also``,
    ``multi``, ``batch_size``, ``workers``, ``max_pixels``, ``cache_dir``, ``no_cache``). Tag with
    ``tagger.tag_paths(inputs)`` (files, folders, globs, WebDataset shards, lists) or
    ``tagger.tag(paths_or_bytes)``."""
    from emoclip.tagging.config import TaggerConfig, build_tagger

    known = {f.name for f in dataclasses.fields(TaggerConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise EmoclipError(f"create_tagger() has no option {', '.join(unknown)}; its options: "
                           f"{', '.join(sorted(known))}")
    if labels is not None and taxonomy is not None:
        raise EmoclipError("give either labels or taxonomy to create_tagger(), not both")
    for key in ("also",):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    config = TaggerConfig(model=model, pretrained=pretrained, taxonomy=taxonomy,
                          checkpoint=None if checkpoint is None else str(checkpoint), precision=precision,
                          decode=decode, labels=None if labels is None else tuple(labels), device=device, **options)
    return build_tagger(config)


# -- experiments ----------------------------------------------------------------------------------------
def experiment_config(*, recipe: str | None = None, configs: Sequence[str | Path] = (), method: str | None = None,
                      options: dict[str, Any] | None = None, sets: Sequence[str] = (), taxonomy: str | None = None,
                      label_taxonomy: str | None = None, name: str | None = None, also: Sequence[str] | None = None,
                      data: dict[str, Any] | None = None, backbone: dict[str, Any] | None = None,
                      train: dict[str, Any] | None = None, eval_split: str | None = None) -> dict[str, Any]:
    """The checked experiment config, merged in order: the recipe, the config files, the given
    sections, then ``--set`` items. A learning rate given without a grid turns the recipe's lr grid
    off (``--lr`` trains at that one rate)."""
    files = [*([_recipe_path(recipe)] if recipe else []), *configs]
    base = read_configs(list(files))
    train = {k: v for k, v in (train or {}).items() if v is not None}
    if train.get("lr") is not None and "lr_grid" not in train:
        train["lr_grid"] = []
    given = {"method": method, "options": options, "taxonomy": taxonomy, "label_taxonomy": label_taxonomy,
             "name": name, "also": list(also) if also is not None else None, "data": data, "backbone": backbone,
             "train": train or None, "eval_split": eval_split}
    config = merge(merge(base, given), parse_sets(list(sets)))
    return check_experiment(config, "the experiment")


def _recipe_path(name: str) -> Path:
    from emoclip.recipes import recipe_path

    return recipe_path(name)


def preflight_weights(config: dict[str, Any]) -> None:
    """Refuse unobtainable external weights of the configured method (UGRIE's BART) before torch loads."""
    if not config.get("method"):
        return
    card = method_card(config["method"])
    if "bart" in card.external_weights:
        from emoclip.methods.ugrie.bart_weights import DEFAULT_BART
        from emoclip.methods.ugrie.bart_weights import preflight as bart_preflight

        bart_preflight((config.get("options") or {}).get("bart") or DEFAULT_BART)


def run(config: dict[str, Any], out: str | Path, device: str = "auto", cache_dir: str | None = None,
        no_cache: bool = False, resume: bool = False, progress: bool | None = None,
        overwrite: bool = False) -> dict[str, Any]:
    """Run a checked experiment config (``experiment_config``) into ``out``; the summary it wrote.
    A folder holding a finished run is refused unless ``resume`` or ``overwrite``."""
    preflight_weights(config)
    from emoclip.training.experiment import run_experiment

    return run_experiment(config, out, device, cache_dir, no_cache, resume, progress, overwrite=overwrite)


def _route(kwargs: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Keyword arguments → (data, backbone, train) sections, by which schema declares each name."""
    data: dict[str, Any] = {}
    backbone: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for key, value in kwargs.items():
        target = data if key in _DATA else backbone if key in _BACKBONE else train if key in _TRAIN else None
        if target is None:
            raise EmoclipError(f"unknown option {key}; data options: {', '.join(_DATA)}; backbone: "
                               f"{', '.join(_BACKBONE)}; training: {', '.join(_TRAIN)}")
        target[key] = value
    return data, backbone, train


def train(method: str | None = None, *, out: str | Path, recipe: str | None = None,
          config: str | Path | Sequence[str | Path] = (), options: dict[str, Any] | None = None,
          taxonomy: str | None = None, label_taxonomy: str | None = None, name: str | None = None,
          also: Sequence[str] | None = None, device: str = "auto", cache_dir: str | None = None,
          no_cache: bool = False, resume: bool = False, progress: bool | None = False, **settings: Any
          ) -> dict[str, Any]:
    """Train ``method`` (or the ``recipe``/``config`` file's) into the run folder ``out`` and score it
    on the test split, exactly as ``emoclip train``; returns the run's summary.

    ``settings``: any data option (``root``, ``split_file``, ``label_file``, ``fold``, …), backbone
    option (``model``, ``pretrained``, ``precision``, ``decode``; default exact fp32/full) or
    training option (``epochs``, ``lr``, ``lr_grid``, ``seed``, ``shots``, …), checked by the schema.
    """
    data, backbone, train_options = _route(settings)
    configs = [config] if isinstance(config, str | Path) else list(config)
    experiment = experiment_config(recipe=recipe, configs=configs, method=method, options=options,
                                   taxonomy=taxonomy, label_taxonomy=label_taxonomy, name=name, also=also,
                                   data=data, backbone=backbone, train=train_options)
    return run(experiment, out, device, cache_dir, no_cache, resume, progress)


def load_checkpoint(path: str | Path, device: str = "auto", *, model: str | None = None,
                    pretrained: str | None = None, precision: str = EXACT.precision,
                    decode: str = EXACT.decode) -> Method:
    """The trained method of a run folder, on its own backbone (unless ``model``/``pretrained`` name
    the same weights elsewhere); ``method.logits(features)`` scores, ``method.backbone`` encodes."""
    from emoclip.tagging.config import TaggerConfig, build_classifier, preflight

    config = TaggerConfig(checkpoint=str(path), model=model, pretrained=pretrained, device=device,
                          precision=precision, decode=decode)
    preflight(config)
    _, method = build_classifier(config)  # the checkpoint's own taxonomy: the method itself
    return method  # type: ignore[return-value]


def evaluate(checkpoint: str | Path | None = None, *, out: str | Path | None = None, split: str = "test",
             taxonomy: str | None = None, label_taxonomy: str | None = None, labels: Sequence[str] | None = None,
             templates: str | None = None, synonyms: bool = False, also: Sequence[str] = (),
             model: str | None = None, pretrained: str | None = None, device: str = "auto",
             precision: str = EXACT.precision, decode: str = EXACT.decode, cache_dir: str | None = None,
             no_cache: bool = False, name: str | None = None, seed: int = 0, **data: Any) -> dict[str, Any]:
    """Score a trained ``checkpoint`` (or zero-shot CLIP) on a dataset split, as ``emoclip evaluate``;
    returns the metrics (and writes metrics.json, predictions and report.md to ``out`` when given).

    ``data``: the data options (``root``, ``split_file``, ``label_file``, ``layout``, ``fold``, …)."""
    from emoclip.core.options import check_options
    from emoclip.datasets.dataset import open_dataset
    from emoclip.evaluation.evaluate import evaluate as run_evaluation
    from emoclip.labels.taxonomy import load_taxonomy
    from emoclip.tagging.config import TaggerConfig, build_classifier, open_cache, preflight

    data = check_options(DataOptions, data, "data", "fix the argument")
    config = TaggerConfig(checkpoint=None if checkpoint is None else str(checkpoint), taxonomy=taxonomy,
                          labels=None if labels is None else tuple(labels), templates=templates, synonyms=synonyms,
                          model=model, pretrained=pretrained, device=device, precision=precision, decode=decode,
                          cache_dir=cache_dir, no_cache=no_cache)
    preflight(config)
    part = open_dataset(data.get("root"), data.get("split_file"), data.get("manifests") or (), data.get("layout"),
                        data.get("fold"), data.get("label_file"), data.get("votes"),
                        data.get("split_seed") or 0).split(split)
    backbone, classifier = build_classifier(config)
    label_tax = load_taxonomy(label_taxonomy) if label_taxonomy else classifier.taxonomy
    part.label_indices(label_tax)
    result = run_evaluation(backbone, classifier, part, label_tax, tuple(also), open_cache(config, backbone))
    if out is not None:
        from emoclip.evaluation.report import write_run
        from emoclip.schema.record import RunRecord

        described = classifier.describe()
        record = RunRecord(name=name or described["method"], method=described, seed=seed,
                           checkpoint=None if checkpoint is None else str(checkpoint), dataset=part.name,
                           split=split, dataset_label=part.name.split(":")[0], data_source=part.source,
                           fold=part.extra.get("fold"), backbone=backbone.identity(),
                           taxonomy=classifier.taxonomy.name, label_taxonomy=label_tax.name).to_dict()
        write_run(result, record, Path(out))
    return result.metrics
