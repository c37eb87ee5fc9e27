"""The frozen CLIP backbone: open_clip underneath, loaded by name and weights the way users expect.

``load_backbone("ViT-B-32", "openai")`` gives the model, its tokenizer and its evaluation
preprocessing, frozen (eval mode, no gradients), and its ``EncoderSpec`` (encoder_spec.py): the one
value that says how an image becomes a feature (weights identity, preprocessing, decode mode, the
image encoder's precision). Weights come from an open_clip pretrained tag
(downloaded on first use when online), a local file (an OpenAI TorchScript ``.pt``, an open_clip
state dict, or safetensors), or ``random`` for benchmarks. ``tiny`` is a small architecture,
registered from ``emoclip/model_configs``, for tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from emoclip.core.device import resolve_device
from emoclip.core.errors import EmoclipError, WeightsUnavailableError, explain, shorten
from emoclip.encoder.precision import check_precision, resolved_for_this_machine, torch_dtype
from emoclip.encoder.spec import GELU, QUICK_GELU, EncoderSpec, check_decode
from emoclip.encoder.weights import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    WEIGHTS_ENV,
    WeightsSource,
    classify,
    ensure_offline_when_unreachable,
    is_safetensors,
    is_torchscript_archive,
    missing_weights_message,
)

log = logging.getLogger("emoclip")

RANDOM_SEED = 0  # random weights are seeded, so every process builds the same "random" model
TEXT_BATCH = 256
# Entries of OpenAI's TorchScript archives that are settings or buffers, not weights.
_TORCHSCRIPT_EXTRA_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})


@cache
def register_model_configs() -> None:
    """Make emoclip's own architectures (``tiny``) known to open_clip."""
    open_clip.add_model_config(str(resources.files("emoclip.encoder").joinpath("model_configs")))


def available_models() -> list[str]:
    register_model_configs()
    return open_clip.list_models()


@dataclass
class Backbone:
    """A frozen CLIP model with its tokenizer and preprocessing, on one device, and its encoder spec."""

    model: torch.nn.Module
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    preprocess: Callable[[Image.Image], torch.Tensor]
    device: torch.device
    model_name: str
    weights: WeightsSource
    spec: EncoderSpec
    source: dict[str, Any] = field(default_factory=dict)  # provenance: tag, hub repo + revision, or file path
    # precision int8: the OpenVINO image tower (int8.py) that replaces model.encode_image, and its
    # quantization report (calibration, held-out agreement with fp32)
    image_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None
    int8_report: Any = None
    # what layout.py measured for this backbone and the image towers it set up per layout (not
    # copied by dataclasses.replace: a replaced backbone is another encoder, measured afresh)
    layouts: dict[Any, Any] = field(init=False, default_factory=dict, repr=False, compare=False)

    # -- identity -------------------------------------------------------------------------------
    @property
    def weights_id(self) -> str:
        """Identity of the weights: the tag, ``random-seed0``, or the SHA-256 of a weights file."""
        return self.spec.weights

    @property
    def preprocess_config(self) -> dict:
        return self.spec.preprocess_config

    @property
    def precision(self) -> str:
        return self.spec.precision

    def identity(self) -> dict:
        """Everything that changes an image feature (the spec): keys caches, recorded in checkpoints and runs."""
        return self.spec.identity()

    def record(self) -> dict:
        """The identity plus where the weights came from (hub repo and revision, or path): what
        ``model.json`` and ``metrics.json`` record. The provenance is not part of the cache key: the
        same bytes fetched at two revisions give the same features."""
        return {**self.spec.identity(), "source": dict(self.source)}

    def identity_hash(self) -> str:
        return self.spec.key()

    def with_decode(self, decode: str) -> Backbone:
        """The same loaded model with another decode mode (no reload: decoding is the pipeline's part)."""
        return replace(self, spec=self.spec.replace(decode=check_decode(decode)))

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def token_width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    # -- encoding -------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()  # not inference_mode: trained heads use these features in autograd
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features (N × D, float32, on the CPU) for ``texts``."""
        chunks = [self.model.encode_text(self.tokenize(texts[i:i + TEXT_BATCH])).float()
                  for i in range(0, len(texts), TEXT_BATCH)]
        return F.normalize(torch.cat(chunks), dim=-1).cpu()

    def for_layout(self, layout: Any) -> Backbone:
        """This backbone set up to encode in ``layout`` (layout.py): torch needs nothing (each lane
        thread carries its own thread count); an OpenVINO tower is compiled with one stream per lane."""
        with_streams = getattr(self.image_encoder, "with_streams", None)
        if with_streams is None or layout.lanes == 1:
            return self
        key = ("tower", layout)
        if key not in self.layouts:
            self.layouts[key] = replace(self, image_encoder=with_streams(layout.lanes, layout.threads))
        return cast(Backbone, self.layouts[key])

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features (B × D, float32, on the CPU) of preprocessed pixels."""
        if self.image_encoder is not None:
            return F.normalize(self.image_encoder(pixels), dim=-1)
        dtype = torch_dtype(self.spec.precision)
        features = self.model.encode_image(pixels.to(self.device, dtype, non_blocking=True)).float()
        return F.normalize(features, dim=-1).cpu()


def _check_model_name(name: str) -> None:
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    models = available_models()
    if name not in models:
        close = [m for m in models if name.lower().replace("/", "-") in m.lower()][:8]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise EmoclipError(f"unknown model '{name}'{hint}; `emoclip models` lists the architectures")


@dataclass(frozen=True)
class _Built:
    """What a weights creator returns: the loaded model and what it is."""

    model: torch.nn.Module
    quick_gelu: bool
    weights_id: str            # sha256:<file digest>, or random-seed0
    source: dict[str, Any]     # provenance recorded in checkpoints and reports (tag, repo, revision, path)


def _config_quick_gelu(name: str) -> bool:
    config = open_clip.get_model_config(name) or {}
    return bool(config.get("quick_gelu", False))


class _NotYetLoaded(logging.Filter):
    """Hide open_clip's "no pretrained weights loaded" warning: emoclip loads them right after building."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _build(name: str, quick_gelu: bool, preprocess: dict[str, Any] | None = None,
           device: str = "cpu") -> torch.nn.Module:
    """The architecture with the activation it was trained with (``quick_gelu`` overrides the config)."""
    quiet = _NotYetLoaded()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None, force_preprocess_cfg=preprocess, quick_gelu=quick_gelu,
                                      device=device)
    finally:
        logging.getLogger().removeFilter(quiet)


# safetensors dtype names → torch (the file format's own table)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def stream_safetensors_into(model: torch.nn.Module, path: str) -> bool:
    """Read a safetensors file straight into the model's tensors, one at a time; False when it does not fit.

    Why by hand: ``safetensors.torch.load_file`` (what open_clip uses) memory-maps the file and copies
    every tensor out, so loading held the 600 MB of weights twice (the mapped pages plus the copy)
    on top of the randomly initialised model. Reading each tensor with ``readinto`` into the
    parameter it belongs to keeps a single copy. The header (8-byte length + JSON) is the format's
    documented layout and is checked entry by entry (names, shapes, dtypes, offsets inside the file);
    anything unexpected returns False and the caller falls back to open_clip's converting loader.
    """
    targets = model.state_dict(keep_vars=True)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= size - 8:
            return False
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return False
        if not isinstance(header, dict):
            return False
        header.pop("__metadata__", None)
        if set(header) != set(targets):
            return False
        base, plan = 8 + length, []
        for key, info in header.items():
            target = targets[key]
            try:
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                start, stop = (int(x) for x in info["data_offsets"])
                shape = [int(x) for x in info["shape"]]
            except (KeyError, TypeError, ValueError):
                return False
            count = target.numel()
            if (shape != list(target.shape) or stop - start != count * dtype.itemsize or start < 0
                    or base + stop > size or not target.is_contiguous()):
                return False
            plan.append((start, key, dtype))
        with torch.no_grad():
            for start, key, dtype in sorted(plan):
                target = targets[key].detach()
                handle.seek(base + start)
                if dtype == target.dtype:
                    buffer = target.reshape(-1).view(torch.uint8).numpy()
                    if handle.readinto(memoryview(buffer)) != buffer.nbytes:
                        return False
                else:  # another dtype in the file: read it, then convert (rare: the hub's files are fp32)
                    raw = bytearray(target.numel() * dtype.itemsize)
                    if handle.readinto(raw) != len(raw):
                        return False
                    target.copy_(torch.frombuffer(raw, dtype=dtype).reshape(target.shape))
    return True


def _load_file_into(model: torch.nn.Module, path: str) -> None:
    """Weights of ``path`` into ``model``: TorchScript, safetensors (streamed) or an open_clip state dict."""
    if is_torchscript_archive(path):
        state = torch.jit.load(path, map_location="cpu").state_dict()
        expected = model.state_dict().keys()
        extra = set(state) - set(expected) - _TORCHSCRIPT_EXTRA_KEYS
        if extra:
            raise KeyError(f"unexpected weights {sorted(extra)[:3]}")
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
        return
    if is_safetensors(path):
        if stream_safetensors_into(model, path):
            return
        if not path.endswith(".safetensors"):  # open_clip picks its reader by the suffix
            from safetensors.torch import load_file

            model.load_state_dict(load_file(path), strict=True)
            return
    # open_clip state dicts (torch.load with weights_only=True) and other safetensors layouts
    open_clip.load_checkpoint(model, path, strict=True, weights_only=True)


def _load_failure(path: str, name: str, exc: BaseException) -> WeightsUnavailableError:
    if isinstance(exc, RuntimeError | KeyError | ValueError | AssertionError):  # open_clip asserts on shapes
        first = shorten(str(exc).strip().splitlines()[0], 200) if str(exc).strip() else type(exc).__name__
        return WeightsUnavailableError(f"weights file {path} does not fit model {name} ({first}); pass the --model "
                                       "the file was trained with")
    reason = explain(exc) or shorten(f"{type(exc).__name__}: {exc}", 200)
    if "; " not in reason:
        reason += "; give a CLIP weights file (.safetensors, an open_clip state dict, or OpenAI's .pt)"
    return WeightsUnavailableError(f"cannot load weights file {path}: {shorten(reason, 400)}")


def _hub_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo, files to try in order): open_clip's rule, safetensors preferred."""
    repo, filename = os.path.split(hf_hub.rstrip("/") + ("/" if hf_hub.endswith("/") else ""))
    repo = repo.rstrip("/")
    filename = filename or "open_clip_pytorch_model.bin"
    safe = {"open_clip_pytorch_model.bin": ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors"]}
    alternatives = safe.get(filename, [filename.rsplit(".", 1)[0] + ".safetensors"] if filename.endswith(".bin")
                            else [])
    return repo, [*alternatives, filename]


def _fetch_tag_file(name: str, tag: str, cfg: dict[str, Any], cache_dir: str | None) -> tuple[str, dict[str, Any]]:
    """(local path, provenance) of a tag's weights, verified against the hub's digest."""
    from emoclip.encoder import hub

    if not cfg.get("hf_hub"):  # a tag published only at a URL: open_clip downloads it (checking its SHA-256)
        offline = ensure_offline_when_unreachable()
        try:
            path = open_clip.download_pretrained(cfg, prefer_hf_hub=False, cache_dir=cache_dir)
        except Exception as exc:
            raise WeightsUnavailableError(missing_weights_message(name, tag, offline, shorten(str(exc), 160))) from None
        return path, {"url": cfg.get("url", ""), "sha256": hub.verify(path)}
    repo, candidates = _hub_candidates(cfg["hf_hub"])
    first: WeightsUnavailableError | None = None
    for filename in candidates:
        try:
            found = hub.fetch(repo, filename, cache_dir=cache_dir)
        except hub.DamagedDownloadError:
            raise
        except WeightsUnavailableError as exc:
            first = first or exc
            continue
        with contextlib.suppress(WeightsUnavailableError):  # beside the weights it says how they were trained
            hub.fetch(repo, "open_clip_config.json", cache_dir=cache_dir)
        return found.path, found.provenance()
    offline = ensure_offline_when_unreachable()
    if offline:
        raise WeightsUnavailableError(missing_weights_message(name, tag, offline=True))
    raise first or WeightsUnavailableError(missing_weights_message(name, tag, offline))


def _create_from_tag(name: str, tag: str, cache_dir: str | None) -> _Built:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = ", ".join(tags) if tags else "none for this architecture"
        raise WeightsUnavailableError(
            f"'{tag}' is neither a pretrained tag of {name} (known: {known}) nor an existing file; "
            "give a tag, a weights file path, or 'random'")
    path, provenance = _fetch_tag_file(name, tag, cfg, cache_dir)
    quick_gelu = bool(cfg.get("quick_gelu", False))  # the activation the tag was trained with, for every tag
    model = _build(name, quick_gelu, preprocess=dict(cfg))
    try:
        _load_file_into(model, path)
    except Exception as exc:
        raise _load_failure(path, name, exc) from None
    return _Built(model, quick_gelu, "sha256:" + provenance["sha256"], {"kind": "tag", "tag": tag, **provenance})


def _config_beside(path: str) -> bool | None:
    """The activation an ``open_clip_config.json`` next to the file states (hub snapshots have one), or None."""
    config = Path(path).parent / "open_clip_config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    model_cfg = data.get("model_cfg") if isinstance(data, dict) else None
    return bool(model_cfg.get("quick_gelu", False)) if isinstance(model_cfg, dict) else None


def _ambiguous_activation(name: str) -> bool:
    """Whether weights for ``name`` exist trained with another activation than its config says: then a bare
    file does not tell which one it needs (ViT-B-32: OpenAI's are QuickGELU, LAION's GELU)."""
    base = name.removesuffix("-quickgelu")
    configured = _config_quick_gelu(name)
    trained = {bool((open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu", False))
               for arch in (base, base + "-quickgelu") for tag in open_clip.list_pretrained_tags_by_model(arch)}
    return bool(trained - {configured})


def file_activation(name: str, path: str) -> bool:
    """QuickGELU or not for a local weights file: known from the file or beside it, or refused — never guessed."""
    if is_torchscript_archive(path):
        return True  # OpenAI's release archives; all trained with QuickGELU
    beside = _config_beside(path)
    if beside is not None:
        return beside
    if name.endswith("-quickgelu") or not _ambiguous_activation(name):
        return _config_quick_gelu(name)  # the architecture's name or its only trained variant says it
    base = name.removesuffix("-quickgelu")
    raise WeightsUnavailableError(
        f"weights file {path} does not say which activation it was trained with, and {name} exists with both; "
        f"pass --model {base}-quickgelu for OpenAI-trained weights, or put an open_clip_config.json beside the file "
        '(e.g. {"model_cfg": {"quick_gelu": false}} for GELU-trained ones such as LAION\'s)')


def _create_from_file(name: str, path: str) -> _Built:
    from emoclip.encoder import hub

    quick_gelu = file_activation(name, path)
    try:
        digest = hub.verify(path)  # a hub snapshot file is checked against its published digest too
    except hub._Mismatch:
        raise WeightsUnavailableError(f"weights file {path} is damaged: its SHA-256 does not match the digest the "
                                      "hub published for it; download it again") from None
    except OSError as exc:
        raise _load_failure(path, name, exc) from None
    model = _build(name, quick_gelu)
    try:
        _load_file_into(model, path)
    except Exception as exc:
        raise _load_failure(path, name, exc) from None
    return _Built(model, quick_gelu, "sha256:" + digest, {"kind": "file", "path": path, "sha256": digest})


def _create_random(name: str) -> _Built:
    log.warning("--pretrained random: the CLIP weights are random, so predictions are meaningless "
                "(compute cost is real: use it for benchmarks and tests only)")
    quick_gelu = _config_quick_gelu(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = _build(name, quick_gelu)
    return _Built(model, quick_gelu, f"random-seed{RANDOM_SEED}", {"kind": "random", "seed": RANDOM_SEED})


_CREATORS: dict[str, Callable[..., _Built]] = {
    "tag": lambda name, src, cache_dir: _create_from_tag(name, src.value, cache_dir),
    "file": lambda name, src, cache_dir: _create_from_file(name, src.value),
    "random": lambda name, src, cache_dir: _create_random(name),
}


def make_preprocess(config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's evaluation preprocessing for a model's preprocessing config (resize, centre-crop, normalise)."""
    return image_transform_v2(PreprocessCfg(**config), is_train=False)


def _calibration_pixels(sources: Sequence[Any], preprocess: Callable, spec: EncoderSpec) -> torch.Tensor:
    """The calibration images decoded exactly as the job decodes them (the spec's decode mode)."""
    from emoclip.encoder.decode import as_source, load_rgb
    from emoclip.encoder.int8 import calibration_pixels

    def decode(source: Any) -> torch.Tensor:
        return preprocess(load_rgb(as_source(source), draft=spec.draft_size, resize_to=spec.input_size))

    return calibration_pixels(sources, decode)


def _with_int8(backbone: Backbone, calibration: Sequence[Any] | None, int8_cache: str | None) -> Backbone:
    """The backbone with its image tower quantized to int8 (from the int8 cache, or made now)."""
    from emoclip.encoder.int8 import prepare_int8, require_runtime

    require_runtime()
    if not calibration:
        raise EmoclipError("--precision int8 needs calibration images: give --calibration DIR (a folder of "
                           "typical images), or tag a folder so its first images calibrate")
    pixels = _calibration_pixels(calibration, backbone.preprocess, backbone.spec)
    visual = cast(torch.nn.Module, backbone.model.visual)  # nn.Module.__getattr__ is typed Tensor | Module
    encoder, report = prepare_int8(visual, backbone.spec.identity(), pixels, int8_cache)
    spec = backbone.spec.replace(precision="int8", quantization=report.key)
    return replace(backbone, spec=spec, image_encoder=encoder, int8_report=report)


def load_backbone(model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                  device: str | torch.device = "auto", cache_dir: str | None = None, precision: str = "fp32",
                  decode: str = "full", calibration: Sequence[Any] | None = None,
                  int8_cache: str | None = None) -> Backbone:
    """Load a frozen CLIP backbone.

    ``pretrained`` is an open_clip tag (``openai``), a weights file path, or ``random``. When the
    weights cannot be had, this raises ``WeightsUnavailableError`` within seconds, saying how to
    supply them (``--pretrained PATH`` or the ``EMOCLIP_PRETRAINED`` environment variable).
    ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``; see precision.py) is the image encoder's
    number format; ``decode`` (``full``, ``draft``) how images are decoded. Both are in ``spec``.
    ``int8`` quantizes the image tower with OpenVINO + NNCF (int8.py), calibrated on the images
    ``calibration`` names (paths or image bytes; the first decodable ones are used), cached in
    ``int8_cache`` (default ``~/.cache/emoclip/int8``).
    """
    check_precision(precision)
    check_decode(decode)
    register_model_configs()
    _check_model_name(model)
    torch_device = resolve_device(device)
    resolved = resolved_for_this_machine(precision, torch_device.type)
    source = classify(pretrained)
    built = _CREATORS[source.kind](model, source, cache_dir)
    clip = built.model.to(torch_device).eval().requires_grad_(False)
    # Weights, not autocast: faster (no per-call casts) and half the memory. The text tower stays
    # fp32 so class weights and trained prompts are exactly as trained (precision.py says why).
    clip.visual.to(torch_dtype(resolved))
    preprocess_cfg: dict[str, Any] = clip.visual.preprocess_cfg  # type: ignore[assignment]  # nn.Module getattr
    preprocess = make_preprocess(preprocess_cfg)
    tokenizer = open_clip.get_tokenizer(model)
    torch_precision = "fp32" if resolved == "int8" else resolved
    spec = EncoderSpec.create(model, built.weights_id, preprocess_cfg, decode, torch_precision,
                              activation=QUICK_GELU if built.quick_gelu else GELU)
    backbone = Backbone(model=clip, tokenizer=tokenizer, preprocess=preprocess, device=torch_device,
                        model_name=model, weights=source, spec=spec, source=built.source)
    return _with_int8(backbone, calibration, int8_cache) if resolved == "int8" else backbone


__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "WEIGHTS_ENV", "Backbone", "available_models",
           "load_backbone"]
