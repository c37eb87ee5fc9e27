"""Running CLIP's text encoder on learnable token embeddings (prompt learning).

A prompt for class *c* is ``[SOT] ctx_1 … ctx_T <class-name tokens> [EOT]``, built by tokenising
``template.format(name)``: the tokens of the template's words before ``{}`` are the context (the
learnable part, initialised from their embeddings), the rest is the class suffix. Two things make
it fast without changing a number:

- **trimming**: CLIP's text transformer is causal and pools at the EOT token, so positions after
  the longest prompt's EOT never influence any feature; the sequence is cut to that length
  instead of 77 (``trim=False`` keeps 77, for checking);
- **precomputation**: the start token and every class suffix, with their positional embeddings
  added, are computed once; each step only adds positions to the context and runs the transformer;
- **shared prefixes**: PT-DPC's C prompts of one image share [SOT + composed context]; causal
  attention makes those positions independent of the class name, so they run once per image and
  each class runs only its few suffix positions against the cached keys and values.

With the context left at its initial value, the features equal ``encode_text(tokenize(...))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from emoclip.core.errors import EmoclipError
from emoclip.encoder.backbone import Backbone

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

    def _prefix(self, block: torch.Tensor, with_sot: bool) -> torch.Tensor:
        """[SOT] + context with positions added: G × P × W."""
        if with_sot:  # the learnable block starts with the SOT token's embedding
            return torch.cat([block[:, :1] + self.sot_position, block[:, 1:] + self.context_pos], dim=1)
        return torch.cat([self.sot_pos.expand(block.shape[0], -1, -1), block + self.context_pos], dim=1)

    def encode(self, block: torch.Tensor, classes: torch.Tensor, with_sot: bool,
               groups: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised text features (B × D) of prompts ``prefix[groups[b]] + suffix[classes[b]]``.

        ``block`` is G × T × W (context blocks); ``groups`` (B,) says which block each prompt uses
        (default: block b for prompt b). When prompts share a block — PT-DPC's C class prompts of one
        image — the shared positions are computed once per block (see ``_encode_shared``).
        """
        prefix = self._prefix(block, with_sot)
        if groups is not None and len(groups) > len(block) and self.shared_prefix_ok:
            x = self._encode_shared(prefix, groups, classes)
        else:
            if groups is not None:
                prefix = prefix[groups]
            x = torch.cat([prefix, self.suffix_pos[classes]], dim=1)
            x = self.model.transformer(x, attn_mask=self.attn_mask)
            x = self.model.ln_final(x)
            x = x[torch.arange(len(classes)), self.eot[classes]]
        return F.normalize(x @ self.model.text_projection, dim=-1)

    @property
    def shared_prefix_ok(self) -> bool:
        """Whether the blocks are open_clip's standard self-attention blocks (else the plain path runs)."""
        transformer = self.model.transformer
        return getattr(transformer, "batch_first", True) and all(
            isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) and b.attn.batch_first
            and b.attn.in_proj_weight is not None and not hasattr(b, "ln_1_kv")
            and all(hasattr(b, a) for a in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"))
            for b in transformer.resblocks)

    def _encode_shared(self, prefix: torch.Tensor, groups: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Causal attention makes the shared positions' states independent of what follows, so they
        run once per group (G × P tokens); each prompt runs only its own suffix (B × S tokens),
        attending to its group's cached keys and values. Equal to the plain path up to rounding."""
        P = prefix.shape[1]
        mask = self.attn_mask
        mask_p = None if mask is None else mask[:P, :P]
        mask_s = None if mask is None else mask[P:self.length, :self.length]
        suffix = self.suffix_pos[classes]
        for blk in self.model.transformer.resblocks:
            heads = blk.attn.num_heads

            def split(t: torch.Tensor, heads: int = heads) -> torch.Tensor:
                return t.unflatten(-1, (heads, -1)).transpose(1, 2)        # B × H × L × d

            def merge(t: torch.Tensor) -> torch.Tensor:
                return t.transpose(1, 2).flatten(2)

            qkv_p = F.linear(blk.ln_1(prefix), blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
            qkv_s = F.linear(blk.ln_1(suffix), blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
            q_p, k_p, v_p = map(split, qkv_p)
            attn_p = F.scaled_dot_product_attention(q_p, k_p, v_p, attn_mask=mask_p)
            keys = torch.cat([qkv_p[1][groups], qkv_s[1]], dim=1)
            values = torch.cat([qkv_p[2][groups], qkv_s[2]], dim=1)
            attn_s = F.scaled_dot_product_attention(split(qkv_s[0]), split(keys), split(values), attn_mask=mask_s)
            prefix = prefix + blk.ls_1(blk.attn.out_proj(merge(attn_p)))
            prefix = prefix + blk.ls_2(blk.mlp(blk.ln_2(prefix)))
            suffix = suffix + blk.ls_1(blk.attn.out_proj(merge(attn_s)))
            suffix = suffix + blk.ls_2(blk.mlp(blk.ln_2(suffix)))
        suffix = self.model.ln_final(suffix)
        return suffix[torch.arange(len(classes)), self.eot[classes] - P]
