"""emoclip: image emotion classification with CLIP.

Python API (the CLI uses the same code path and the same defaults; see docs/python-api.md)::

    import emoclip

    tagger = emoclip.create_tagger(model="ViT-B-32", pretrained="openai", taxonomy="mikels8")
    for row in tagger.tag_paths(["photos/"]):
        print(row.path, row.label, row.probability)

``emoclip.train``, ``emoclip.evaluate`` and ``emoclip.load_checkpoint`` run and read experiments;
``emoclip.list_methods()``, ``list_recipes()`` and ``list_taxonomies()`` list what there is
without importing torch; ``emoclip.search(folder, "calm sea", labels=["contentment"])`` queries a
tagged shard folder as ``emoclip search`` and ``emoclip browse`` do. Every name loads on first use,
so ``import emoclip`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from emoclip.core.errors import EmoclipError, ImageDecodeError, TaxonomyError, WeightsUnavailableError

# The public names are imported on first use (PEP 562): importing torch/open_clip/torchvision takes
# seconds, and commands that fail early (missing weights offline, a bad argument) must not pay it.
_LAZY = {
    "Backbone": "encoder.backbone", "load_backbone": "encoder.backbone",
    "Prediction": "tagging.tagger", "Tagger": "tagging.tagger",
    "Taxonomy": "labels.taxonomy", "load_taxonomy": "labels.taxonomy", "taxonomy_from_labels": "labels.taxonomy",
    "ZeroShotClassifier": "methods.zeroshot",
    "create_tagger": "api", "evaluate": "api", "list_methods": "api", "list_recipes": "api",
    "list_taxonomies": "api", "load_checkpoint": "api", "train": "api",
    "search": "browse.query",   # the query of `emoclip search` and the browse page, over a shard folder
}

if TYPE_CHECKING:
    from emoclip.api import (
        create_tagger,
        evaluate,
        list_methods,
        list_recipes,
        list_taxonomies,
        load_checkpoint,
        train,
    )
    from emoclip.browse.query import search
    from emoclip.encoder.backbone import Backbone, load_backbone
    from emoclip.labels.taxonomy import Taxonomy, load_taxonomy, taxonomy_from_labels
    from emoclip.methods.zeroshot import ZeroShotClassifier
    from emoclip.tagging.tagger import Prediction, Tagger


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'emoclip' has no attribute {name!r}")

try:
    __version__ = version("emoclip")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = ["Backbone", "EmoclipError", "ImageDecodeError", "Prediction", "Tagger", "Taxonomy", "TaxonomyError",
           "WeightsUnavailableError", "ZeroShotClassifier", "__version__", "create_tagger", "evaluate",
           "list_methods", "list_recipes", "list_taxonomies", "load_backbone", "load_checkpoint", "load_taxonomy",
           "search", "taxonomy_from_labels", "train"]
