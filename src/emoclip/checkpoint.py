"""Checkpoints: the trained tensors only, in safetensors, plus JSON metadata — never pickle.

``model.safetensors`` holds the method's own tensors (prompt tokens, head weights: kilobytes to a
few megabytes, never the backbone). ``model.json`` says everything needed to use them: the method
and its options, the backbone (architecture, weights identity, preprocessing), the taxonomy, and the
training data and metrics. Loading needs no other flag, and refuses a backbone or taxonomy that does
not match, saying what was expected.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from .atomic import atomic_write_bytes, atomic_write_text
from .backbone import Backbone, load_backbone
from .errors import EmoclipError
from .methods.base import Method, create_method
from .taxonomy import Taxonomy, taxonomy_from_dict

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors, written atomically."""
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def save_checkpoint(folder: str | Path, method: Method, extra: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone: Backbone = method.backbone
    save_tensors(dict(method.state_dict()), folder / WEIGHTS_FILE, {"format": "emoclip", "method": method.name})
    meta = {
        "format_version": FORMAT_VERSION,
        "method": method.name,
        "config": dataclasses.asdict(method.config),
        "backbone": {**backbone.identity(), "pretrained": backbone.weights.value},
        "taxonomy": method.taxonomy.to_dict(),
        **(extra or {}),
    }
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2) + "\n")
    return folder


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path).expanduser()
    if not path.exists():
        raise EmoclipError(f"{path} is not an emoclip checkpoint (it does not exist); give the run folder written "
                           "by `emoclip train`")
    folder = path if path.is_dir() else path.parent
    meta, weights = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta.is_file() or not weights.is_file():
        raise EmoclipError(f"{path} is not an emoclip checkpoint (expected {META_FILE} and {WEIGHTS_FILE}); "
                           "give the run folder written by `emoclip train`")
    return meta, weights


def read_metadata(path: str | Path) -> dict:
    meta, _ = _paths(path)
    return json.loads(meta.read_text())


def check_backbone(meta: dict, backbone: Backbone) -> None:
    want = meta["backbone"]
    have = backbone.identity()
    if want["model"] != have["model"] or want["weights"] != have["weights"]:
        raise EmoclipError(
            f"checkpoint was trained on {want['model']} with weights {want['weights']}, but the backbone is "
            f"{have['model']} with {have['weights']}; pass --model {want['model']} --pretrained "
            f"{want.get('pretrained', want['weights'])} (or leave them out)")


def load_checkpoint(path: str | Path, backbone: Backbone | None = None, device: str = "auto",
                    pretrained: str | None = None) -> Method:
    """Rebuild a trained method; the backbone comes from the metadata unless one is given."""
    meta_path, weights_path = _paths(path)
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise EmoclipError(f"checkpoint {path} has format {meta['format_version']}; upgrade emoclip to read it")
    if backbone is None:
        backbone = load_backbone(meta["backbone"]["model"], pretrained or meta["backbone"]["pretrained"], device)
    check_backbone(meta, backbone)
    taxonomy: Taxonomy = taxonomy_from_dict(meta["taxonomy"], origin=str(meta_path))
    method = create_method(meta["method"], backbone, taxonomy, meta["config"])
    state = load_file(str(weights_path))
    try:
        method.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EmoclipError(f"checkpoint {path} does not fit method {meta['method']}: "
                           f"{str(exc).splitlines()[0]}") from None
    return method.eval()


def classifier_for(method: Method, taxonomy: Taxonomy | None):
    """The method itself, or a view under another taxonomy where the method supports it."""
    if taxonomy is None or taxonomy.names == method.taxonomy.names:
        return method
    if hasattr(method, "for_taxonomy"):
        return method.for_taxonomy(taxonomy)
    raise EmoclipError(f"this {method.name} checkpoint predicts {method.taxonomy.name} "
                       f"({', '.join(method.taxonomy.names)}); it cannot predict '{taxonomy.name}' — leave out "
                       "--taxonomy, or score coarser levels with --also / --label-taxonomy")
