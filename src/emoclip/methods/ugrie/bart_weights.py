"""Where UGRIE's BART comes from: a Hugging Face name (downloaded on first use, cached by
transformers) or a local folder written by ``save_pretrained`` — the same treatment as CLIP weights.

``preflight`` runs before torch/transformers are imported (seconds on these machines): offline and
not cached, it stops at once with one line saying how to supply the weights, instead of letting
huggingface_hub retry for tens of seconds. ``load_bart`` then loads the model and its tokenizer
through transformers and returns the identity a checkpoint records.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emoclip.core.errors import EmoclipError, WeightsUnavailableError, shorten
from emoclip.encoder.weights import ensure_offline_when_unreachable
from emoclip.schema.methods import DEFAULT_BART

log = logging.getLogger("emoclip")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class BartSource:
    """``kind`` is 'folder' (a local save_pretrained folder) or 'hub' (a Hugging Face repository name)."""

    kind: str
    value: str


def classify_bart(spec: str | os.PathLike | None) -> BartSource:
    text = str(spec or DEFAULT_BART)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EmoclipError(f"BART folder {text} has no config.json; give a folder written by "
                               "save_pretrained (model and tokenizer) or a Hugging Face name like facebook/bart-base")
        return BartSource("folder", str(path.resolve()))
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or (os.sep == "\\" and "\\" in text)
    if looks_local:
        raise EmoclipError(f"BART folder {text} does not exist; give an existing folder (--set bart=PATH) or a "
                           "Hugging Face name like facebook/bart-base")
    return BartSource("hub", text)


def missing_bart_message(name: str, offline: bool = True, reason: str = "") -> str:
    if not offline:
        detail = f" ({reason})" if reason else ""
        return (f"cannot get BART weights '{name}': the download failed{detail}; check the network (or HTTPS_PROXY, "
                "HF_ENDPOINT) and rerun, or pass a downloaded save_pretrained folder with --set bart=PATH")
    return (f"cannot get BART weights '{name}': the Hugging Face hub is unreachable (offline) and they are not "
            "cached; on a connected machine run `python -c \"from transformers import AutoModelForSeq2SeqLM as M, "
            f"AutoTokenizer as T; n='{name}'; M.from_pretrained(n).save_pretrained('bart'); "
            "T.from_pretrained(n).save_pretrained('bart')\"` and pass the folder with --set bart=PATH")


def _cached(name: str) -> bool | None:
    """Whether the hub cache holds a snapshot of ``name`` (None: the cache cannot be listed)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    snapshots = Path(constants.HF_HUB_CACHE) / ("models--" + name.replace("/", "--")) / "snapshots"
    try:
        return any((s / "config.json").exists() for s in snapshots.iterdir()) if snapshots.is_dir() else False
    except OSError:
        return None


def preflight(spec: str | None) -> BartSource:
    """Fail within seconds, before transformers is imported, when the BART weights cannot possibly load."""
    source = classify_bart(spec)
    if source.kind == "hub" and ensure_offline_when_unreachable() and _cached(source.value) is False:
        raise WeightsUnavailableError(missing_bart_message(source.value))
    return source


def preflight_checkpoint(path: str | os.PathLike, bart: str | None = None) -> None:
    """The same check for a checkpoint whose method reads BART (its ``model.json`` names it, unless
    ``bart`` overrides where it is)."""
    folder = Path(path).expanduser()
    meta_file = (folder if folder.is_dir() else folder.parent) / "model.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError, RecursionError):
        return  # load_checkpoint gives the exact message
    config = (meta.get("config") if isinstance(meta, dict) else None) or {}
    if isinstance(config, dict) and config.get("bart"):
        preflight(bart or config["bart"])


def _fingerprint(folder: Path) -> str:
    """SHA-256 of a local folder's weights file: its identity, whatever the folder is called."""
    for name in _WEIGHT_FILES:
        file = folder / name
        if file.is_file():
            from emoclip.encoder import hub

            try:
                return "sha256:" + hub.verify(file)  # remembered once hashed; a hub snapshot is checked too
            except hub._Mismatch:
                raise EmoclipError(f"BART weights {file} are damaged (their SHA-256 does not match the digest the "
                                   "hub published); download them again") from None
    return "config-only"


_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _fetch_hub_weights(name: str) -> tuple[str, str]:
    """(revision, sha256) of a hub BART's weights file, downloaded (with progress) and verified first.

    transformers then loads from the cache at exactly that revision, so what a checkpoint records is
    what was used (transformers 5.x no longer sets ``config._commit_hash``)."""
    from emoclip.encoder import hub

    first: WeightsUnavailableError | None = None
    for filename in _HUB_WEIGHT_FILES:
        try:
            found = hub.fetch(name, filename)
        except hub.DamagedDownloadError:
            raise
        except WeightsUnavailableError as exc:
            first = first or exc
            continue
        return found.revision, found.sha256
    offline = ensure_offline_when_unreachable()
    raise WeightsUnavailableError(missing_bart_message(name, offline, "" if offline or not first else str(first)))


def bart_location(spec: str | None) -> str:
    """How a checkpoint records its BART: an absolute folder path, or the hub name (never a relative path)."""
    return classify_bart(spec).value


def load_bart(spec: str | None, config: dict[str, Any] | None = None):
    """(model, tokenizer, identity). With ``config`` the architecture is built from it and the weights are
    left to the caller (a fully fine-tuned checkpoint holds them all); only the tokenizer is read.

    The identity's ``weights`` is the weights file's SHA-256 (a folder) or ``name@revision sha256:…``
    (the hub): what a checkpoint records and later checks."""
    source = preflight(spec)
    import transformers
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    from emoclip.encoder.hub import download_progress

    transformers.logging.set_verbosity_error()
    revision = None
    try:
        identity: dict[str, Any] = {"source": source.value, "kind": source.kind}
        if source.kind == "hub" and config is None:
            revision, digest = _fetch_hub_weights(source.value)
            identity |= {"revision": revision, "weights": f"{source.value}@{revision} sha256:{digest}"}
        with download_progress():
            tokenizer = AutoTokenizer.from_pretrained(source.value, revision=revision)
            if config is not None:
                model = BartForConditionalGeneration(BartConfig.from_dict(config))
                identity["weights"] = "from-checkpoint"
            else:
                model = BartForConditionalGeneration.from_pretrained(source.value, revision=revision or "main")
                if source.kind == "folder":
                    identity["weights"] = _fingerprint(Path(source.value))
    except OSError as exc:
        if source.kind == "hub":
            reason = shorten(str(exc).strip().splitlines()[0], 200) if str(exc).strip() else type(exc).__name__
            offline = ensure_offline_when_unreachable()
            raise WeightsUnavailableError(missing_bart_message(source.value, offline, reason)) from None
        raise EmoclipError(f"cannot load BART from {source.value}: {shorten(str(exc), 200)}; "
                           "give a folder written by save_pretrained (model and tokenizer)") from None
    return model, tokenizer, identity


def bart_config_dict(model) -> dict[str, Any]:
    """The architecture as a plain dict (recorded in checkpoints; rebuilds the model without weights)."""
    data = model.config.to_dict()
    return {k: v for k, v in data.items() if not k.startswith("_") and k != "transformers_version"}


def preflight_experiment(config_files: list[str], method: str | None, options: dict[str, Any]) -> None:
    """The same check for `emoclip train`, from its config files and flags, before torch is imported.

    Only reads what decides the BART source (the method and its ``bart`` option, later files and the
    command line winning, as in ``experiment.merge``); everything else is validated by the experiment.
    """
    import tomllib

    import yaml

    chosen, bart = None, None
    for file in config_files:
        path = Path(file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError):
            return  # the experiment reports the bad file
        if isinstance(data, dict):
            chosen = data.get("method") or chosen
            bart = (data.get("options") or {}).get("bart") or bart
    chosen, bart = method or chosen, options.get("bart") or bart
    if chosen == "ugrie":
        preflight(bart)
