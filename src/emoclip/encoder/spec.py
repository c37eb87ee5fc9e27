"""One immutable description of how an image becomes a feature: the encoder spec.

Everything that changes an image feature is a field here — the architecture, the weights' identity,
the preprocessing, how images are decoded, the number format the encoder runs in — and nothing else
is. The decoding pipeline reads its decode mode from it, the feature cache keys on it, checkpoints
(``model.json``) and run reports (``metrics.json``) record it, so they can never disagree; a new
speed option that changes features is a new field here and every one of them follows.

``precision="int8"`` is the image tower quantized by OpenVINO + NNCF (int8.py); ``quantization``
then names the quantized model (a hash of the weights, preprocessing, calibration pixels and library
versions), so int8 features of two calibrations, or int8 and fp32 features, never mix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from emoclip.core.errors import EmoclipError
from emoclip.encoder.precision import RESOLVED

# How images are decoded before preprocessing. Both end in the same resize + crop; "draft" lets a
# JPEG at least twice the model input decode at 1/2, 1/4 or 1/8 scale in the DCT (Pillow's draft
# mode) — 4x less work on a 12-megapixel photo, pixels differing only slightly after the resize.
DECODE_MODES = {
    "full": "decode every pixel, then resize (exact)",
    "draft": "JPEGs at least twice the model input decode at reduced size in the DCT (fast for photos)",
}


# The activation inside the transformer MLPs. OpenAI trained CLIP with QuickGELU (x·σ(1.702x)), most
# later releases with GELU; the same weights in the other one give features off by ~1e-3 (random
# weights) to far more (trained ones), so it is part of the identity: features of the two never mix.
GELU, QUICK_GELU = "gelu", "quick_gelu"
ACTIVATIONS = (GELU, QUICK_GELU)


def check_decode(mode: str) -> str:
    if mode not in DECODE_MODES:
        raise EmoclipError(f"unknown decode mode '{mode}'; use one of {', '.join(DECODE_MODES)}")
    return mode


@dataclass(frozen=True)
class EncoderSpec:
    """What turns image bytes into a feature. Hashable, JSON-able, and resolved (no 'auto' inside)."""

    model: str                 # open_clip architecture
    weights: str               # the weights' identity: sha256:<file digest> (tags too), or random-seed0
    preprocess: str            # open_clip's preprocessing config as canonical JSON (frozen, hashable)
    decode: str = "full"       # a key of DECODE_MODES
    precision: str = "fp32"    # the image encoder's number format: fp32, bf16, fp16 or int8
    activation: str = GELU     # the MLP activation the weights were trained with (ACTIVATIONS)
    quantization: str = ""     # int8 only: the quantized model's key (int8.model_key)

    def __post_init__(self) -> None:
        check_decode(self.decode)
        if self.activation not in ACTIVATIONS:
            raise EmoclipError(f"unknown activation '{self.activation}'; use one of {', '.join(ACTIVATIONS)}")
        if self.precision not in RESOLVED:
            raise EmoclipError(f"an encoder spec needs a resolved precision ({', '.join(RESOLVED)}), "
                               f"not '{self.precision}'")
        if (self.precision == "int8") != bool(self.quantization):
            raise EmoclipError("an int8 encoder spec names its quantized model, and only an int8 spec does")

    @classmethod
    def create(cls, model: str, weights: str, preprocess: dict[str, Any], decode: str = "full",
               precision: str = "fp32", activation: str = GELU) -> EncoderSpec:
        canonical = {k: list(v) if isinstance(v, tuple) else v for k, v in (preprocess or {}).items()}
        return cls(model, weights, json.dumps(canonical, sort_keys=True), decode, precision, activation)

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return json.loads(self.preprocess)

    @property
    def input_size(self) -> int:
        """The model's square input side (the larger one for a non-square size)."""
        size = self.preprocess_config.get("size", 224)
        return int(max(size) if isinstance(size, list | tuple) else size)

    @property
    def draft_size(self) -> int | None:
        """The smallest side a draft-decoded JPEG may keep, or None when decoding is exact."""
        return self.input_size if self.decode == "draft" else None

    def identity(self) -> dict[str, Any]:
        """The spec as plain data: cache metadata, ``model.json`` and ``metrics.json`` record this.

        ``quantization`` appears only when set, so the keys of fp32/bf16/fp16 specs (and the feature
        caches and checkpoints recorded under them) are the same as before int8 existed."""
        data = {**asdict(self), "preprocess": self.preprocess_config}
        if not self.quantization:
            del data["quantization"]
        return data

    def key(self) -> str:
        """A short hash of the identity: features of specs with different keys never mix."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> EncoderSpec:
        return replace(self, **changes)
