"""Checkpoints: the trained tensors only, in safetensors, plus JSON metadata — never pickle.

``model.safetensors`` holds the method's own tensors (prompt tokens, head weights: kilobytes to a
few megabytes, never the backbone). ``model.json`` says everything needed to use them: the method
and its options, the backbone (architecture, weights identity, preprocessing), the taxonomy, and the
training data and metrics. Loading needs no other flag, and refuses a backbone or taxonomy that does
not match, saying what was expected.

Loading trusts nothing: a truncated, garbage or pickle-bearing weights file, a ``model.json`` that
is not JSON or lacks a field, tensors that are NaN or of the wrong shape, and weights and metadata
of different epochs (a run killed between writing the two) are each refused with one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from emoclip.core.atomic import atomic_write_bytes, atomic_write_text
from emoclip.core.errors import DamagedFileError, EmoclipError, shorten
from emoclip.core.strict_json import dumps
from emoclip.core.userfiles import parse_document, read_text
from emoclip.encoder.backbone import Backbone, load_backbone, stream_safetensors_into
from emoclip.labels.taxonomy import Taxonomy, taxonomy_from_dict
from emoclip.methods.base import Method, create_method

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors, written atomically."""
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def read_tensors(path: str | Path, what: str = "weights file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (no code can run from one), or a ``DamagedFileError``."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except OSError as exc:
        raise EmoclipError(f"cannot read {what} {path}: {exc.strerror or exc}; check the path") from None
    except Exception as exc:
        raise DamagedFileError(f"{what} {path} is damaged or not a safetensors file ({shorten(str(exc), 120)}); "
                               "restore it, or retrain") from None
    return tensors, metadata


def read_tensor_metadata(path: str | Path, what: str = "weights file") -> dict[str, str]:
    """The metadata of a safetensors file, its header checked, without reading any tensor."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return handle.metadata() or {}
    except OSError as exc:
        raise EmoclipError(f"cannot read {what} {path}: {exc.strerror or exc}; check the path") from None
    except Exception as exc:
        raise DamagedFileError(f"{what} {path} is damaged or not a safetensors file ({shorten(str(exc), 120)}); "
                               "restore it, or retrain") from None


def save_checkpoint(folder: str | Path, method: Method, extra: dict | None = None,
                    tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """``model.safetensors`` + ``model.json``; ``tensors`` (default: the method's own) are the weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone: Backbone = method.backbone
    epoch = (extra or {}).get("training", {}).get("best_epoch")
    tensor_meta = {"format": "emoclip", "method": method.name, **({"epoch": str(epoch)} if epoch is not None else {})}
    save_tensors(dict(method.state_dict()) if tensors is None else tensors, folder / WEIGHTS_FILE, tensor_meta)
    config = dataclasses.asdict(method.config)
    if config.get("bart"):  # an absolute folder or a hub name: the checkpoint loads from any working directory
        from emoclip.methods.ugrie.bart_weights import bart_location

        config["bart"] = bart_location(config["bart"])
    meta = {
        "format_version": FORMAT_VERSION,
        "method": method.name,
        "config": config,
        # the spec, plus where the weights came from (hub repo + revision, or the file's absolute path)
        "backbone": {**backbone.record(), "pretrained": backbone.weights.value},
        "taxonomy": method.taxonomy.to_dict(),
        **({"bart": dict(bart)} if (bart := vars(method).get("bart_identity")) else {}),
        **(extra or {}),
    }
    atomic_write_text(folder / META_FILE, dumps(meta, indent=2) + "\n")  # strict: NaN never reaches the file
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


_REQUIRED = (("method", str), ("config", dict), ("backbone", dict), ("taxonomy", dict))
_REQUIRED_BACKBONE = ("model", "weights", "pretrained")


def read_metadata(path: str | Path) -> dict:
    """``model.json``, checked to have every field loading needs."""
    meta_path, _ = _paths(path)
    meta = parse_document(read_text(meta_path, "checkpoint metadata"), ".json", str(meta_path), "checkpoint metadata",
                          DamagedFileError)
    problem = None
    if not isinstance(meta, dict):
        problem = "it is not a JSON object"
    else:
        problem = next((f"'{key}' is missing or not a {kind.__name__}" for key, kind in _REQUIRED
                        if not isinstance(meta.get(key), kind)), None)
        if problem is None:
            problem = next((f"'backbone.{key}' is missing" for key in _REQUIRED_BACKBONE
                            if not isinstance(meta["backbone"].get(key), str)), None)
        if problem is None and not isinstance(meta.get("format_version", 0), int):
            problem = "'format_version' is not a number"
    if problem:
        raise DamagedFileError(f"checkpoint metadata {meta_path} is damaged: {problem}; restore it, or retrain")
    return meta


def check_backbone(meta: dict, backbone: Backbone) -> None:
    """The checkpoint's backbone (architecture, weights digest, activation) is the one given, or a one-line refusal."""
    want = meta["backbone"]
    have = backbone.identity()
    if not str(want["weights"]).startswith(("sha256:", "random-")) and want["weights"] == backbone.weights.value:
        raise EmoclipError(
            f"checkpoint was trained on {want['model']} '{want['weights']}' before emoclip identified weights by "
            "their digest and built the activation the tag was trained with, so its features were not the "
            "published model's; retrain it with this version")
    if (want["model"] != have["model"] or want["weights"] != have["weights"]
            or want.get("activation", have["activation"]) != have["activation"]):
        raise EmoclipError(
            f"checkpoint was trained on {want['model']} with weights {want['weights']}, but the backbone is "
            f"{have['model']} with {have['weights']}; pass --model {want['model']} --pretrained "
            f"{want.get('pretrained', want['weights'])} (or leave them out)")


def load_checkpoint(path: str | Path, backbone: Backbone | None = None, device: str = "auto",
                    pretrained: str | None = None, bart: str | None = None) -> Method:
    """Rebuild a trained method; the backbone comes from the metadata unless one is given, and ``bart``
    (a folder or hub name) overrides where a UGRIE checkpoint's BART is (its digest is still checked)."""
    meta_path, weights_path = _paths(path)
    meta = read_metadata(path)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise EmoclipError(f"checkpoint {path} has format {meta['format_version']}; upgrade emoclip to read it")
    tensor_meta = read_tensor_metadata(weights_path, "checkpoint weights")
    trained_epoch = (meta.get("training") or {}).get("best_epoch") if isinstance(meta.get("training"), dict) else None
    if "epoch" in tensor_meta and trained_epoch is not None and tensor_meta["epoch"] != str(trained_epoch):
        raise DamagedFileError(f"checkpoint {path} is half-written (weights of epoch {tensor_meta['epoch']}, metadata "
                               f"of epoch {trained_epoch}); run the same `emoclip train … --resume` to repair it")
    if backbone is None:
        backbone = load_backbone(meta["backbone"]["model"], pretrained or meta["backbone"]["pretrained"], device)
    check_backbone(meta, backbone)
    try:
        taxonomy: Taxonomy = taxonomy_from_dict(meta["taxonomy"], origin=str(meta_path))
        config = {**meta["config"], "bart": bart} if bart and "bart" in meta["config"] else meta["config"]
        method = create_method(meta["method"], backbone, taxonomy, config)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DamagedFileError(f"checkpoint metadata {meta_path} is damaged ({type(exc).__name__}: "
                               f"{shorten(str(exc), 100)}); restore it, or retrain") from None
    # Straight into the method's tensors when names and shapes match (a full-tune UGRIE checkpoint holds
    # all of BART: reading it into a dict first held its 560 MB twice); otherwise the checking path.
    if not stream_safetensors_into(method, str(weights_path)):
        state, _ = read_tensors(weights_path, "checkpoint weights")
        _refuse_non_finite(path, state)
        try:
            method.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EmoclipError(f"checkpoint {path} does not fit method {meta['method']} ({shorten(str(exc), 200)}); "
                               "its weights were damaged or come from another run: retrain it") from None
    _refuse_non_finite(path, method.state_dict())
    return method.eval()


def _refuse_non_finite(path: str | Path, state) -> None:
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad:
        raise DamagedFileError(f"checkpoint {path} holds NaN or infinite weights ({bad}); retrain it")


def classifier_for(method: Method, taxonomy: Taxonomy | None):
    """The method itself, or a view under another taxonomy where the method supports it."""
    if taxonomy is None or taxonomy.names == method.taxonomy.names:
        return method
    if hasattr(method, "for_taxonomy"):
        return method.for_taxonomy(taxonomy)
    raise EmoclipError(f"this {method.name} checkpoint predicts {method.taxonomy.name} "
                       f"({', '.join(method.taxonomy.names)}); it cannot predict '{taxonomy.name}' — leave out "
                       "--taxonomy, or score coarser levels with --also / --label-taxonomy")
