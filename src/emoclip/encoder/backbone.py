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

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from emoclip.core.device import resolve_device
from emoclip.core.errors import EmoclipError, WeightsUnavailableError, explain, shorten
from emoclip.encoder.precision import check_precision, resolved_for_this_machine, torch_dtype
from emoclip.encoder.spec import EncoderSpec, check_decode
from emoclip.encoder.weights import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    WEIGHTS_ENV,
    WeightsSource,
    classify,
    ensure_offline_when_unreachable,
    file_fingerprint,
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
    # precision int8: the OpenVINO image tower (int8.py) that replaces model.encode_image, and its
    # quantization report (calibration, held-out agreement with fp32)
    image_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None
    int8_report: Any = None

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


def _create_from_tag(name: str, tag: str, cache_dir: str | None) -> torch.nn.Module:
    if not open_clip.get_pretrained_cfg(name, tag) and not name.startswith("hf-hub:"):
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = ", ".join(tags) if tags else "none for this architecture"
        raise WeightsUnavailableError(
            f"'{tag}' is neither a pretrained tag of {name} (known: {known}) nor an existing file; "
            "give a tag, a weights file path, or 'random'")
    offline = ensure_offline_when_unreachable()
    try:
        return open_clip.create_model(name, pretrained=tag, cache_dir=cache_dir)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise WeightsUnavailableError(missing_weights_message(name, tag, offline, reason)) from None


def _create_from_file(name: str, path: str) -> torch.nn.Module:
    try:
        if is_torchscript_archive(path):
            # An OpenAI release archive: TorchScript (not pickle), trained with QuickGELU.
            model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True)
            state = torch.jit.load(path, map_location="cpu").state_dict()
            expected = model.state_dict().keys()
            extra = set(state) - set(expected) - _TORCHSCRIPT_EXTRA_KEYS
            if extra:
                raise KeyError(f"unexpected weights {sorted(extra)[:3]}")
            model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
            return model
        # open_clip state dicts (torch.load with weights_only=True) and safetensors
        return open_clip.create_model(name, pretrained=path, weights_only=True)
    except (RuntimeError, KeyError, ValueError, AssertionError) as exc:  # open_clip asserts on shapes
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailableError(
            f"weights file {path} does not fit model {name} ({first}); pass the --model the file was "
            "trained with (OpenAI-trained state dicts need the '-quickgelu' variant, e.g. ViT-B-32-quickgelu)"
        ) from None
    except Exception as exc:
        reason = explain(exc) or shorten(f"{type(exc).__name__}: {exc}", 200)
        if "; " not in reason:
            reason += "; give a CLIP weights file (.safetensors, an open_clip state dict, or OpenAI's .pt)"
        raise WeightsUnavailableError(f"cannot load weights file {path}: {shorten(reason, 400)}") from None


def _create_random(name: str) -> torch.nn.Module:
    log.warning("--pretrained random: the CLIP weights are random, so predictions are meaningless "
                "(compute cost is real: use it for benchmarks and tests only)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return open_clip.create_model(name, pretrained=None)


_CREATORS: dict[str, Callable[..., torch.nn.Module]] = {
    "tag": lambda name, src, cache_dir: _create_from_tag(name, src.value, cache_dir),
    "file": lambda name, src, cache_dir: _create_from_file(name, src.value),
    "random": lambda name, src, cache_dir: _create_random(name),
}


def _weights_identity(source: WeightsSource) -> str:
    if source.kind == "file":
        return "sha256:" + file_fingerprint(source.value)
    if source.is_random:
        return f"random-seed{RANDOM_SEED}"
    return source.value


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
    encoder, report = prepare_int8(backbone.model.visual, backbone.spec.identity(), pixels, int8_cache)
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
    clip = _CREATORS[source.kind](model, source, cache_dir)
    clip = clip.to(torch_device).eval().requires_grad_(False)
    # Weights, not autocast: faster (no per-call casts) and half the memory. The text tower stays
    # fp32 so class weights and trained prompts are exactly as trained (precision.py says why).
    clip.visual.to(torch_dtype(resolved))
    preprocess = image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(model)
    torch_precision = "fp32" if resolved == "int8" else resolved
    spec = EncoderSpec.create(model, _weights_identity(source), clip.visual.preprocess_cfg, decode, torch_precision)
    backbone = Backbone(model=clip, tokenizer=tokenizer, preprocess=preprocess, device=torch_device,
                        model_name=model, weights=source, spec=spec)
    return _with_int8(backbone, calibration, int8_cache) if resolved == "int8" else backbone


__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "WEIGHTS_ENV", "Backbone", "available_models",
           "load_backbone"]
