"""Prompt learning on a frozen CLIP: PT-DPC (dynamic prompt composition) and CoOp, one code path.

Learnable prompt blocks ``P`` (K × T × W: K = C class-specific blocks or 1 shared; T tokens of
width W) replace the context words of a template. Two switches give the four rows of the PT-DPC
paper's ablation (Table 2), and CoOp is the same machinery with image conditioning off:

================== ============== ===============================================================
instance_specific  class_specific  prompt used for class c of image n
================== ============== ===============================================================
False              False          P[0]                             (CoOp, shared context)
False              True           P[c]                             (CoOp class-specific, "CS only")
True               False          w[n,0,j]·P[0,j]                  ("IS only")
True               True           Σ_k w[n,k,j]·P[k,j]              (PT-DPC, equation 3)
================== ============== ===============================================================

with w[n,k,j] = cos(P[k,j], f_n) (``weight: cos``, the paper) or (cos+1)/2 (``weight: cos01``, the
authors' release), optionally divided by Σ_k w[n,k,j] (``normalize: true``: then, with every block
initialised from the same template, the initial model is exactly zero-shot CLIP with it). The
composed prompt is joined to each class name, text-encoded, and scored
``logit_scale · cos(text, f_n)``. Only ``P`` trains. ``loss: softmax-ce`` reproduces the release,
which applies a softmax before the cross-entropy (a double softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emoclip.core.errors import EmoclipError
from emoclip.encoder.backbone import Backbone
from emoclip.encoder.prompt_encoder import PromptTextEncoder, context_template
from emoclip.labels.taxonomy import Taxonomy
from emoclip.methods.base import Method, current_init_seed, register_method
from emoclip.schema.methods import LOSSES, CoOpConfig, PromptConfig  # options, ranges, help: the cards

WEIGHTS = {
    "cos": lambda cos: cos,                   # paper, equation 3
    "cos01": lambda cos: (cos + 1.0) / 2.0,   # authors' release
}
class PromptMethod(Method):
    """Shared implementation; registered as ``ptdpc`` and ``coop`` with different defaults."""

    Config = PromptConfig
    config: PromptConfig

    def __init__(self, backbone: Backbone, taxonomy: Taxonomy, config: PromptConfig) -> None:
        super().__init__(backbone, taxonomy, config)
        if config.weight not in WEIGHTS:
            raise EmoclipError(f"weight must be one of {', '.join(WEIGHTS)}, got '{config.weight}'")
        if config.loss not in LOSSES:
            raise EmoclipError(f"loss must be one of {', '.join(LOSSES)}, got '{config.loss}'")
        template = context_template(config.template, config.n_ctx)
        object.__setattr__(self, "encoder", PromptTextEncoder(backbone, taxonomy.names, template, config.trim))
        if config.instance_specific and self.encoder.width != backbone.feature_dim:
            raise EmoclipError(
                f"{self.name} with instance_specific composes prompts by their cosine to the image feature, which "
                f"needs token width == feature width; {backbone.model_name} has {self.encoder.width} vs "
                f"{backbone.feature_dim}. Use a backbone where they match (ViT-B/32, ViT-B/16) or "
                "instance_specific: false")
        blocks = len(taxonomy) if config.class_specific else 1
        init = self.encoder.initial_block(config.learn_sot)
        if config.n_ctx:
            generator = torch.Generator().manual_seed(current_init_seed())  # the run's --seed
            noise = torch.randn(blocks, config.n_ctx, init.shape[-1], generator=generator) * config.init_std
            init = torch.cat([init[:1].expand(blocks, -1, -1), noise], 1) if config.learn_sot else noise
        else:
            init = init.unsqueeze(0).expand(blocks, -1, -1)
        self.prompts = nn.Parameter(init.clone().contiguous())  # K × T × W
        self.logit_scale = backbone.logit_scale

    # -- the composition of equation 3 ------------------------------------------------------------
    def composition_weights(self, features: torch.Tensor) -> torch.Tensor:
        """w[n, k, j] for image features (N × D): the (transformed, optionally normalised) cosines."""
        cos = torch.einsum("nd,ktd->nkt", F.normalize(features, dim=-1), F.normalize(self.prompts, dim=-1))
        weights = WEIGHTS[self.config.weight](cos)
        if self.config.normalize:
            weights = weights / weights.sum(dim=1, keepdim=True)
        return weights

    def compose(self, features: torch.Tensor) -> torch.Tensor:
        """Per-image prompt blocks (N × T × W): pd[n, j] = Σ_k w[n, k, j] · P[k, j]."""
        return torch.einsum("nkt,ktw->ntw", self.composition_weights(features), self.prompts)

    def class_text_features(self) -> torch.Tensor:
        """C × D text features when prompts do not depend on the image."""
        classes = torch.arange(len(self.taxonomy))
        groups = classes if self.config.class_specific else torch.zeros_like(classes)  # shared: one prefix
        return self.encoder.encode(self.prompts, classes, self.config.learn_sot, groups)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = F.normalize(features.float(), dim=-1)
        if not self.config.instance_specific:
            return self.logit_scale * features @ self.class_text_features().T
        n, c = features.shape[0], len(self.taxonomy)
        composed = self.compose(features)                                    # N × T × W
        groups = torch.arange(n).repeat_interleave(c)                        # prompt n·C + c uses image n's
        classes = torch.arange(c).repeat(n)
        text = self.encoder.encode(composed, classes, self.config.learn_sot, groups).view(n, c, -1)
        return self.logit_scale * torch.einsum("nd,ncd->nc", features, text)

    def loss(self, logits: torch.Tensor | None, targets: torch.Tensor, batch: dict) -> torch.Tensor:
        assert logits is not None  # loss_uses_logits: the trainer always passes them
        if self.config.loss == "softmax-ce":  # the release: cross_entropy(softmax(logits)) — a double softmax
            return F.cross_entropy(torch.softmax(logits, dim=-1), targets)
        return F.cross_entropy(logits, targets)


@register_method("ptdpc")
class PTDPC(PromptMethod):
    """PT-DPC: class-specific prompts composed per image by similarity to its feature."""



@register_method("coop")
class CoOp(PromptMethod):
    """CoOp: a shared (or class-specific, ``class_specific: true``) learnable context."""

    Config = CoOpConfig
