"""One way to build a Tagger from options: the CLI, the Python API, the service and Ray actors all use it.

``TaggerConfig`` is the complete, immutable description of a tagging job's model side: which
backbone (weights, device, and the encoder's speed options), which classifier (zero-shot with a
taxonomy or labels, or a trained checkpoint), and how rows are shaped. ``build_tagger(config)``
turns it into a ``Tagger``. A new option is a field here and a flag in ``cli.tagger_options``; every
front end inherits it. A config is plain data (JSON-able through ``to_dict``), so it can be shipped
to a Ray actor or recorded in a manifest and rebuilt there identically.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoclip.core.options import option, spec_of, validate
from emoclip.encoder.decode import DEFAULT_MAX_PIXELS
from emoclip.encoder.precision import PRECISIONS
from emoclip.encoder.spec import DECODE_MODES
from emoclip.schema.encoder import TAGGING, EncoderOptions

_HELP = {f.name: spec_of(f).help for f in dataclasses.fields(EncoderOptions)}

if TYPE_CHECKING:
    from emoclip.encoder.backbone import Backbone
    from emoclip.encoder.cache import FeatureCache
    from emoclip.labels.taxonomy import Taxonomy
    from emoclip.tagging.tagger import Classifier, Tagger

log = logging.getLogger("emoclip")

@dataclass(frozen=True)
class TaggerConfig:
    """Everything that decides a tagger's rows (and how fast it makes them)."""

    # the backbone and the encoder's speed options: their defaults (and help) are the schema's tagging
    # defaults (emoclip.schema.encoder.TAGGING), the same for the CLI, the Python API, the service and
    # Ray actors. Precision and decoding change features slightly, so they are part of the encoder spec
    # that keys the cache and is recorded in reports and checkpoints.
    model: str | None = option(TAGGING.model, _HELP["model"])
    pretrained: str | None = option(TAGGING.pretrained, _HELP["pretrained"])
    device: str = option(TAGGING.device, _HELP["device"])
    precision: str = option(TAGGING.precision, _HELP["precision"], choices=PRECISIONS)
    decode: str = option(TAGGING.decode, _HELP["decode"], choices=tuple(DECODE_MODES))
    calibration: tuple[str, ...] | None = option(
        None, "--precision int8: images (files or folders) whose activations calibrate the quantized encoder; "
              "none: images spread over the job (with_calibration).")
    # the classifier
    checkpoint: str | None = option(None, "A run folder from `emoclip train`; none: zero-shot.")
    bart: str | None = option(None, "Where a UGRIE checkpoint's BART is (a folder or hub name); none: as recorded.")
    taxonomy: str | None = option(None, "Built-in taxonomy name or file; default mikels8, or the checkpoint's.")
    labels: tuple[str, ...] | None = option(None, "Your own labels instead of a taxonomy.")
    templates: str | None = option(None, "Prompt template set, a file of templates, or one template with {}.")
    synonyms: bool = option(False, "Average prompts over each class's synonyms too.")
    # the rows
    top_k: int = option(3, "How many top labels to list per image.", min=1)
    also: tuple[str, ...] | None = option(None, "Coarser levels to add; none: every level the taxonomy maps into.")
    multi: float | None = option(None, "Also list every label with probability >= multi.", min=0, max=1)
    # the pipeline
    batch_size: int | None = option(None, "Images per encoder call (default 16 on the CPU, 64 on CUDA).", min=1)
    workers: int | None = option(
        None, "Decoding threads (default: each encoder lane decodes its own; one lane: one per CPU).", min=1)
    max_pixels: int | None = option(DEFAULT_MAX_PIXELS, "Refuse larger images as possible decompression bombs.",
                                    min=1)
    cache_dir: str | None = option(None, "Feature cache folder (default ~/.cache/emoclip/features).")
    no_cache: bool = option(False, "Do not read or write the feature cache.")

    def __post_init__(self) -> None:
        from emoclip.encoder.precision import check_precision
        from emoclip.encoder.spec import check_decode

        check_precision(self.precision)
        check_decode(self.decode)
        validate(self, "tagging", "fix the option")  # the Python API is refused what the CLI's flags refuse

    def replace(self, **changes: Any) -> TaggerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaggerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


def preflight(config: TaggerConfig) -> None:
    """Refuse unobtainable weights before the seconds-long torch/open_clip import (weights.preflight)."""
    from emoclip.encoder.weights import DEFAULT_MODEL, DEFAULT_PRETRAINED
    from emoclip.encoder.weights import preflight as weights_preflight

    if config.checkpoint:
        from emoclip.methods.ugrie.bart_weights import preflight_checkpoint

        preflight_checkpoint(config.checkpoint, config.bart)  # a ugrie checkpoint's BART
    if config.checkpoint and not config.pretrained:
        return  # the checkpoint names its weights; load_checkpoint checks them
    weights_preflight(config.model or DEFAULT_MODEL, config.pretrained or DEFAULT_PRETRAINED)


def load_taxonomy_for(config: TaggerConfig, default: str | None = "mikels8") -> Taxonomy | None:
    from emoclip.labels.taxonomy import load_taxonomy, taxonomy_from_labels

    if config.labels:
        return taxonomy_from_labels(list(config.labels))
    name = config.taxonomy or default
    return load_taxonomy(name) if name else None


def with_calibration(config: TaggerConfig, items: Sequence[Any]) -> TaggerConfig:
    """``config`` with the job's own images as int8 calibration, when int8 is asked for and no
    ``calibration`` was given: images spread evenly over the job (a sorted folder starts with one
    class), as absolute paths, so a Ray actor or a resume calibrates identically (the same images
    give the same quantized model, found in the int8 cache by its key)."""
    from emoclip.encoder.int8 import CALIBRATION_IMAGES, HOLDOUT_IMAGES

    if config.precision != "int8" or config.calibration:
        return config
    wanted = 2 * (CALIBRATION_IMAGES + HOLDOUT_IMAGES)  # some may not decode
    paths = []
    for item in items:  # file paths, or inputs.Item (a local file has .path; tar members have none)
        path = item if isinstance(item, str | os.PathLike) else getattr(item, "path", None)
        if path is not None and not getattr(item, "error", None):
            paths.append(str(Path(path).absolute()))
    if len(paths) > wanted:
        paths = [paths[i * len(paths) // wanted] for i in range(wanted)]
    return config.replace(calibration=tuple(paths) or None)


def calibration_sources(config: TaggerConfig) -> list[str] | None:
    """The calibration images ``config`` names: files as given, folders (and globs) expanded."""
    if not config.calibration:
        return None
    from emoclip.core.files import collect_images

    return [str(path) for path in collect_images(list(config.calibration))]


def load_backbone_for(config: TaggerConfig, model: str | None = None, pretrained: str | None = None) -> Backbone:
    from emoclip.encoder.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_backbone

    return load_backbone(model or config.model or DEFAULT_MODEL, pretrained or config.pretrained or DEFAULT_PRETRAINED,
                         config.device, precision=config.precision, decode=config.decode,
                         calibration=calibration_sources(config))


def check_int8_agreement(backbone: Backbone, classifier: Classifier) -> None:
    """Top-1 agreement of int8 with fp32 under the job's own taxonomy, on the quantization's held-out
    images: recorded in the report (metrics.json, logs) and refused below the stated threshold."""
    report = backbone.int8_report
    if report is None or report.holdout_fp32 is None:
        return
    from emoclip.encoder.int8 import check_agreement

    reference = classifier.logits(report.holdout_fp32).argmax(-1)
    quantized = classifier.logits(report.holdout_int8).argmax(-1)
    report.top1_agreement = round(float((reference == quantized).float().mean()), 4)
    log.info("int8 vs fp32 on %d held-out images: top-1 agreement %.3f, min cosine %.5f",
             report.holdout_images, report.top1_agreement, report.min_cosine)
    check_agreement(report)


def build_classifier(config: TaggerConfig, backbone: Backbone | None = None) -> tuple[Backbone, Classifier]:
    """(backbone, classifier): a trained checkpoint (its backbone unless overridden) or zero-shot.

    ``backbone``: an already loaded one to reuse (the service builds one classifier per requested
    taxonomy on the backbone it loaded once); a checkpoint still checks that it matches."""
    if config.checkpoint:
        from emoclip.methods.checkpoint import classifier_for, load_checkpoint, read_metadata

        # the checkpoint's weights (unless overridden: load_checkpoint checks they match) with this
        # config's encoder options (precision, decoding); a backbone given by the caller is reused
        if backbone is None:
            meta = read_metadata(config.checkpoint)["backbone"]
            backbone = load_backbone_for(config, config.model or meta["model"],
                                         config.pretrained or meta["pretrained"])
        method = load_checkpoint(config.checkpoint, backbone, config.device, bart=config.bart)
        classifier = classifier_for(method, load_taxonomy_for(config, default=None))
        check_int8_agreement(method.backbone, classifier)
        return method.backbone, classifier
    from emoclip.methods.zeroshot import ZeroShotClassifier

    backbone = backbone or load_backbone_for(config)
    taxonomy = load_taxonomy_for(config)
    assert taxonomy is not None  # the default taxonomy applies
    zero_shot = ZeroShotClassifier(backbone, taxonomy, config.templates, config.synonyms)
    check_int8_agreement(backbone, zero_shot)
    return backbone, zero_shot


def open_cache(config: TaggerConfig, backbone: Backbone) -> FeatureCache | None:
    from emoclip.encoder.cache import FeatureCache, default_cache_dir

    if config.no_cache:
        return None
    return FeatureCache(config.cache_dir or default_cache_dir(), backbone)


def build_tagger(config: TaggerConfig, backbone: Backbone | None = None) -> Tagger:
    """The Tagger that ``config`` describes: backbone and classifier loaded once, ready to tag
    (on ``backbone`` when given: it must be the one ``config`` describes)."""
    from emoclip.tagging.tagger import Tagger

    if backbone is None:
        preflight(config)
    backbone, classifier = build_classifier(config, backbone)
    tagger = Tagger(backbone, classifier, top_k=config.top_k, coarse_levels=list(config.also) if config.also else None,
                    batch_size=config.batch_size, workers=config.workers, max_pixels=config.max_pixels,
                    cache=open_cache(config, backbone), multi=config.multi)
    from emoclip.encoder.layout import warm_up

    warm_up(backbone, tagger.batch_size)  # layout measured (once per machine) and lanes warm before the first job
    return tagger
