"""Running CLIP's text encoder on learnable token embeddings (prompt learning).

A prompt for class *c* is ``[SOT] ctx_1 … ctx_T <class-name tokens> [EOT]``, built by tokenising
``template.format(name)``: the tokens of the template's words before ``{}`` are the context (the
learnable part, initialised from their embeddings), the rest is the class suffix. Two things make
it fast without changing a number:

- **trimming**: CLIP's text transformer is causal and pools at the EOT token, so positions after
  the longest prompt's EOT never influence any feature; the sequence is cut to that length
  instead of 77 (``trim=False`` keeps 77, for checking);
- **precomputation**: the start token and every class suffix, with their positional embeddings
  added, are computed once; each step only adds positions to the context and runs the transformer.

With the context left at its initial value, the features equal ``encode_text(tokenize(...))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .backbone import Backbone
from .errors import EmoclipError

PLACEHOLDER_WORD = "X"


def context_template(template: str | None, n_ctx: int | None) -> str:
    """The template whose words before ``{}`` are the context: given, or ``n_ctx`` placeholders."""
    if n_ctx:
        return " ".join([PLACEHOLDER_WORD] * n_ctx) + " {}."
    if not template or template.count("{}") != 1 or not template.split("{}")[0].strip():
        raise EmoclipError(f"prompt template {template!r} needs words before one '{{}}' (e.g. 'a photo of {{}}.') "
                           "or give n_ctx for random context tokens")
    return template


class PromptTextEncoder:
    """Encodes (context embeddings, class) pairs with the frozen text tower; holds no trainable state."""

    def __init__(self, backbone: Backbone, class_names: Sequence[str], template: str, trim: bool = True) -> None:
        model = backbone.model
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        if not all(hasattr(model, a) for a in needed) or getattr(model, "text_pool_type", "argmax") != "argmax":
            raise EmoclipError(f"prompt learning needs an open_clip CLIP with the built-in text tower; "
                               f"{backbone.model_name} has another text encoder")
        self.model = model
        context = template.split("{}")[0].strip()
        self.n_ctx = int((backbone.tokenize([context])[0] > 0).sum().item()) - 2  # minus SOT and EOT
        ids = backbone.tokenize([template.format(name) for name in class_names])
        self.eot = ids.argmax(dim=-1)
        self.length = int(self.eot.max().item()) + 1 if trim else ids.shape[1]
        with torch.no_grad():
            embedded = model.token_embedding(ids[:, : self.length]).float()
            positions = model.positional_embedding[: self.length].float()
        self.init_context = embedded[0, 1 : 1 + self.n_ctx].clone()        # T × W
        self.sot = embedded[0, :1].clone()                                   # 1 × W (the same for all)
        self.sot_position = positions[:1]
        self.sot_pos = self.sot + self.sot_position
        self.suffix_pos = embedded[:, 1 + self.n_ctx :] + positions[1 + self.n_ctx :]  # C × S × W
        self.context_pos = positions[1 : 1 + self.n_ctx]
        self.attn_mask = model.attn_mask[: self.length, : self.length] if model.attn_mask is not None else None

    @property
    def width(self) -> int:
        return int(self.init_context.shape[-1])

    def initial_block(self, with_sot: bool) -> torch.Tensor:
        """The initial learnable block: the context embeddings, optionally preceded by the SOT embedding."""
        return torch.cat([self.sot, self.init_context]) if with_sot else self.init_context.clone()

    def encode(self, block: torch.Tensor, classes: torch.Tensor, with_sot: bool) -> torch.Tensor:
        """Normalised text features (B × D) for context blocks ``block`` (B × T × W) and class indices (B,)."""
        batch = block.shape[0]
        if with_sot:  # the learnable block starts with the SOT token's embedding
            parts = [block[:, :1] + self.sot_position, block[:, 1:] + self.context_pos]
        else:
            parts = [self.sot_pos.expand(batch, -1, -1), block + self.context_pos]
        x = torch.cat([*parts, self.suffix_pos[classes]], dim=1)
        x = self.model.transformer(x, attn_mask=self.attn_mask)
        x = self.model.ln_final(x)
        x = x[torch.arange(batch), self.eot[classes]] @ self.model.text_projection
        return F.normalize(x, dim=-1)
