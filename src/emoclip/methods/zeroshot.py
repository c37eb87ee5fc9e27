"""Zero-shot classification: class weights are text features of prompts, logits are scaled cosines.

For each class, the captions (templates × class name, and optionally × synonyms) are encoded,
L2-normalised and averaged, then re-normalised — the CLIP paper's prompt ensembling. A class with a
single caption keeps that caption's normalised feature bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from emoclip.encoder.backbone import Backbone
from emoclip.labels.prompts import class_captions, resolve_templates
from emoclip.labels.taxonomy import Taxonomy


def ensemble_text_weights(backbone: Backbone, captions: Sequence[Sequence[str]]) -> torch.Tensor:
    """C × D class weights: per class, the re-normalised mean of its captions' normalised features."""
    flat = [c for group in captions for c in group]
    features = backbone.encode_texts(flat)
    weights, start = [], 0
    for group in captions:
        block = features[start:start + len(group)]
        start += len(group)
        weights.append(block[0] if len(group) == 1 else F.normalize(block.mean(0), dim=-1))
    return torch.stack(weights)


class ZeroShotClassifier:
    """Scores image features against prompt-built class weights under one taxonomy."""

    def __init__(self, backbone: Backbone, taxonomy: Taxonomy, templates: str | Sequence[str] | None = None,
                 synonyms: bool = False) -> None:
        self.taxonomy = taxonomy
        self.templates = resolve_templates(templates)
        self.synonyms = synonyms
        self.logit_scale = backbone.logit_scale
        self.class_weights = ensemble_text_weights(backbone, class_captions(taxonomy, self.templates, synonyms))

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """N × C logits from N × D normalised image features."""
        return self.logit_scale * image_features.float() @ self.class_weights.T

    def describe(self) -> dict:
        return {"method": "zero-shot", "templates": list(self.templates), "synonyms": self.synonyms}
