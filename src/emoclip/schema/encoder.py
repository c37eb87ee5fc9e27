"""The encoder/backbone options, and the defaults every front end shares.

Two default sets, because the two kinds of job want different trade-offs and each must be the same
everywhere it runs:

- ``TAGGING`` (``emoclip predict``, ``emoclip.create_tagger``, the service, Ray actors):
  ``precision=auto`` (bf16 where this CPU measurably runs it faster, fp16 on CUDA) and
  ``decode=draft`` (large JPEGs decode at reduced size): fast, probabilities differ slightly.
- ``EXACT`` (``train``, ``evaluate``, ``emoclip.train``/``emoclip.evaluate``): fp32 and full
  decoding, so a reported score does not depend on the machine it was measured on.

``TaggerConfig`` and the CLI flags take their defaults from here; nothing else spells them.
"""

from __future__ import annotations

from dataclasses import dataclass

from emoclip.core.options import option, validate
from emoclip.encoder.precision import PRECISIONS
from emoclip.encoder.spec import DECODE_MODES
from emoclip.encoder.weights import DEFAULT_MODEL, DEFAULT_PRETRAINED


@dataclass(frozen=True)
class EncoderOptions:
    """Which CLIP, on which device, and the encoder's speed options (part of the encoder spec that
    keys the feature cache and is recorded in reports and checkpoints)."""

    model: str | None = option(None, f"open_clip architecture (`emoclip models`; `tiny` is for tests); default "
                                     f"{DEFAULT_MODEL}, or the checkpoint's")
    pretrained: str | None = option(None, "open_clip pretrained tag, a local weights file, or `random` "
                                          f"(benchmarks only); default {DEFAULT_PRETRAINED}, or the checkpoint's")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option("auto", "image encoder number format; auto: bf16 where this CPU measurably runs it "
                                    "faster, fp16 on CUDA, else fp32; int8: quantized with OpenVINO (CPU, the "
                                    "int8 extra; docs/int8.md)", choices=PRECISIONS)
    decode: str = option("draft", "draft: JPEGs at least twice the model input decode at reduced size (fast on "
                                  "photos, pixels differ slightly); full: exact", choices=tuple(DECODE_MODES))

    def __post_init__(self) -> None:
        validate(self, "encoder", "fix --precision/--decode or the config's backbone section")


TAGGING = EncoderOptions()
EXACT = EncoderOptions(precision="fp32", decode="full")
