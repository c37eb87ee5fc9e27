"""UGRIE: image emotion classification as template filling, by BART reading a frozen CLIP feature.

Only the abstract of the paper (IEEE TCSVT 34(8), 2024) is public; what it fixes and what emoclip
chose is listed in the README ("UGRIE"). The model:

    CLIP image feature (frozen, cached) ─▶ mapping network ─▶ k prefix vectors in BART's embedding space
    BART encoder input  = [prefix vectors ; embedded task text naming the emotion model]
    BART decoder output = the filled template, e.g. "this image evokes zest, a kind of joy, a positive feeling"

Training is teacher-forced token cross-entropy on the filled template of the image's class (the
generation objective; the one trainer runs it). Inference scores every class's filled template by
the decoder's log-likelihood (rank classification): the encoder runs once per image, the decoder
once over all (image, class) pairs. Any taxonomy can be scored, including label words never seen
in training; coarse levels come from the same pass (a class's sentence carries its parent chain).
One model can be trained on several taxonomies at once (``taxonomies``; see ``emoclip.training.unified``):
targets are then global indices over the tasks' classes, in task order.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from emoclip.core.errors import EmoclipError
from emoclip.encoder.backbone import Backbone
from emoclip.labels.taxonomy import Taxonomy, load_taxonomy, taxonomy_from_dict
from emoclip.methods.base import Method, register_method, seeded_init
from emoclip.methods.ugrie.bart_weights import DEFAULT_BART, bart_config_dict, load_bart
from emoclip.methods.ugrie.bart_weights import preflight as bart_preflight
from emoclip.methods.ugrie.templates import EmotionTemplates, load_templates
from emoclip.schema.methods import LENGTH_NORMS, MAPPINGS, TUNE_MODES, UGRIEConfig
from emoclip.schema.methods import UGRIE_PRECISIONS as PRECISIONS

log = logging.getLogger("emoclip")

LORA_TARGETS = ["q_proj", "v_proj"]
# Vocabulary logits held at once while scoring candidates (floats): bounds memory whatever N × C is.
SCORE_BUDGET = 1 << 25


class MLPMapping(nn.Module):
    """ClipCap's MLP: feature → hidden (tanh) → k × width."""

    def __init__(self, dim: int, width: int, k: int, hidden: int) -> None:
        super().__init__()
        self.k, self.width = k, width
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, k * width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).view(len(features), self.k, self.width)


class TransformerMapping(nn.Module):
    """ClipCap's transformer mapper: [linear(feature) as k tokens ; k learned constants] → the constants' outputs."""

    def __init__(self, dim: int, width: int, k: int, layers: int) -> None:
        super().__init__()
        self.k, self.width = k, width
        self.linear = nn.Linear(dim, k * width)
        self.constant = nn.Parameter(torch.randn(k, width))
        heads = 8 if width % 8 == 0 else 1
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.linear(features).view(len(features), self.k, self.width)
        x = torch.cat([x, self.constant.expand(len(features), -1, -1)], 1)
        return self.transformer(x)[:, self.k:]


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise EmoclipError(f"ugrie {what} must be one of {', '.join(allowed)}, got '{value}'")
    return value


def _taxonomy(ref: Any) -> Taxonomy:
    return taxonomy_from_dict(ref, origin="ugrie checkpoint") if isinstance(ref, dict) else load_taxonomy(ref)


@register_method("ugrie")
class UGRIE(Method):
    Config = UGRIEConfig
    config: UGRIEConfig
    loss_uses_logits = False

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> None:
        bart_preflight(options.get("bart") or DEFAULT_BART)

    def __init__(self, backbone: Backbone, taxonomy: Taxonomy, config: UGRIEConfig) -> None:
        super().__init__(backbone, taxonomy, config)
        _choice(config.tune, TUNE_MODES, "tune")
        _choice(config.mapping, MAPPINGS, "mapping")
        _choice(config.length_norm, LENGTH_NORMS, "length_norm")
        _choice(config.precision, PRECISIONS, "precision")
        templates = load_templates(config.templates)
        tasks: list[Taxonomy] = []
        for tax in [*(_taxonomy(t) for t in config.taxonomies)] or [taxonomy]:
            if tax.name not in {t.name for t in tasks}:
                tasks.append(tax)
        if taxonomy.name not in {t.name for t in tasks}:
            tasks.insert(0, taxonomy)

        from_config = config.tune == "full" and config.bart_config is not None  # the checkpoint holds every weight
        bart, tokenizer, identity = load_bart(config.bart, config.bart_config if from_config else None)
        self._check_base(config, bart, identity, from_config)
        bart.requires_grad_(config.tune == "full")
        if config.tune == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                              target_modules=LORA_TARGETS)
            bart = seeded_init(lambda: inject_adapter_in_model(lora, bart))
            for name, p in bart.named_parameters():
                p.requires_grad_("lora_" in name)
        self.bart = bart
        object.__setattr__(self, "tokenizer", tokenizer)
        width = bart.config.d_model
        kind = config.mapping if config.mapping != "auto" else ("transformer" if config.tune == "mapping" else "mlp")
        dim = backbone.feature_dim
        self.mapping = seeded_init(lambda: MLPMapping(dim, width, config.prefix_length, config.mapping_hidden or width)
                                   if kind == "mlp" else
                                   TransformerMapping(dim, width, config.prefix_length, config.mapping_layers))
        self.templates: EmotionTemplates = templates
        self.tasks = tasks
        offsets = [0]
        for tax in tasks:
            offsets.append(offsets[-1] + len(tax))
        self.offsets = offsets
        self.config = dataclasses.replace(
            config, templates=templates.to_dict(), taxonomies=[t.to_dict() for t in tasks],
            bart_config=config.bart_config if from_config else bart_config_dict(bart),
            bart_weights=config.bart_weights or identity["weights"])
        self.bart_identity = {**identity, "weights": self.config.bart_weights}
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and _native_bf16())
        special = bart.config
        self.pad_id, self.bos_id, self.eos_id = special.pad_token_id, special.bos_token_id, special.eos_token_id
        self.start_id = special.decoder_start_token_id if special.decoder_start_token_id is not None else self.eos_id
        self._views: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _check_base(config: UGRIEConfig, bart, identity: dict, from_config: bool) -> None:
        """A checkpoint of the LoRA or mapping modes needs the very BART it was trained on."""
        if from_config or config.bart_config is None:
            return
        have = bart_config_dict(bart)
        keys = ("d_model", "encoder_layers", "decoder_layers", "vocab_size")
        if any(have.get(k) != config.bart_config.get(k) for k in keys):
            raise EmoclipError(f"BART at {config.bart} is not the architecture this checkpoint was trained with "
                               f"({', '.join(f'{k}={config.bart_config.get(k)}' for k in keys)}); pass the same "
                               "BART with --set bart=PATH")
        if config.bart_weights and identity["weights"] != config.bart_weights:
            if identity["kind"] == "folder":
                raise EmoclipError(f"BART weights in {config.bart} ({identity['weights'][:19]}…) are not those this "
                                   f"checkpoint was trained on ({config.bart_weights[:19]}…); pass the same folder")
            log.warning("BART %s is at revision %s, the checkpoint was trained on %s", config.bart,
                        identity["weights"], config.bart_weights)

    # -- tokens -----------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return [self.bos_id, *self.tokenizer(text, add_special_tokens=False)["input_ids"], self.eos_id]

    def _padded(self, rows: list[list[int]]) -> torch.Tensor:
        out = torch.full((len(rows), max(map(len, rows))), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, :len(row)] = torch.tensor(row)
        return out

    def view_tokens(self, taxonomy: Taxonomy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(task token ids, C × L candidate sentences padded with pad, their token counts) for a taxonomy."""
        key = (taxonomy.name, *taxonomy.names)
        if key not in self._views:
            candidates = self._padded([self._ids(s) for s in self.templates.sentences(taxonomy)])
            task = torch.tensor(self._ids(self.templates.task_text(taxonomy)))
            self._views[key] = (task, candidates, (candidates != self.pad_id).sum(1))
        return self._views[key]

    def target_index(self, taxonomy: Taxonomy, classes: torch.Tensor) -> torch.Tensor:
        """Global training targets for ``classes`` of one of the tasks."""
        names = [t.name for t in self.tasks]
        if taxonomy.name not in names:
            raise EmoclipError(f"ugrie was built for {', '.join(names)}, not '{taxonomy.name}'")
        return classes + self.offsets[names.index(taxonomy.name)]

    def _split(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bounds = torch.tensor(self.offsets[1:-1], dtype=targets.dtype)
        task = torch.bucketize(targets, bounds, right=True)
        return task, targets - torch.tensor(self.offsets, dtype=targets.dtype)[task]

    # -- the network ------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def encode(self, features: torch.Tensor, tasks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (N × S × d) and mask for [prefix(feature) ; embedded task text] per image."""
        prefix = self.mapping(features.float())
        task_ids = self._padded([t.tolist() for t in tasks])
        embedded = self.bart.get_encoder().embed_tokens(task_ids)
        inputs = torch.cat([prefix.to(embedded.dtype), embedded], 1)
        lengths = torch.tensor([len(t) for t in tasks])
        task_mask = (torch.arange(task_ids.shape[1]) < lengths[:, None]).long()
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long), task_mask], 1)
        hidden = self.bart.get_encoder()(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        return hidden, mask

    def token_logprobs(self, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(labels[t] | labels[<t], encoder states) per position, 0 at padding (teacher forcing)."""
        from transformers.models.bart.modeling_bart import shift_tokens_right

        decoder_input = shift_tokens_right(labels, self.pad_id, self.start_id)
        states = self.bart.get_decoder()(input_ids=decoder_input, encoder_hidden_states=hidden,
                                         encoder_attention_mask=mask, use_cache=False).last_hidden_state
        logits = (self.bart.lm_head(states) + self.bart.final_logits_bias).float()
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        return picked * (labels != self.pad_id)

    def scores_from_states(self, hidden: torch.Tensor, mask: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
        """N × C class scores: each class's filled template scored by the decoder, all pairs batched."""
        _, candidates, lengths = self.view_tokens(taxonomy)
        n, (c, length) = len(hidden), candidates.shape
        step = max(1, SCORE_BUDGET // (c * length * self.bart.config.vocab_size))
        sums = []
        for i in range(0, n, step):
            h, m = hidden[i:i + step], mask[i:i + step]
            pairs = len(h) * c
            logp = self.token_logprobs(h.repeat_interleave(c, 0), m.repeat_interleave(c, 0),
                                       candidates.repeat(len(h), 1))
            sums.append(logp.sum(-1).view(pairs // c, c))
        total = torch.cat(sums) if sums else hidden.new_zeros(0, c)
        if self.config.length_norm == "token-mean":
            # Rank by the mean token log-probability, kept on the scale of a sequence log-probability:
            # with equal-length candidates this is exactly the sum (the sequence posterior).
            return total / lengths * lengths.float().mean()
        return total

    def scores(self, features: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
        with self._autocast():
            hidden, mask = self.encode(features, [self.view_tokens(taxonomy)[0]] * len(features))
            return self.scores_from_states(hidden, mask, taxonomy).float()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores(features, self.taxonomy)

    def loss(self, logits: torch.Tensor | None, targets: torch.Tensor, batch: dict) -> torch.Tensor:
        """Token cross-entropy of each image's filled template, under its own task's text."""
        if targets.ndim != 1:
            raise EmoclipError("ugrie learns to write one label's sentence; train it on labels (leave out "
                               "train.target: votes)")
        generator = batch.get("generator")
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)  # dropout masks follow the epoch's generator: resume is exact
            task, cls = self._split(targets)
            views = [self.view_tokens(self.tasks[t]) for t in task.tolist()]
            labels = self._padded([views[i][1][c][:views[i][2][c]].tolist() for i, c in enumerate(cls.tolist())])
            with self._autocast():
                hidden, mask = self.encode(batch["features"], [v[0] for v in views])
                logp = self.token_logprobs(hidden, mask, labels)
            return -logp.sum() / (labels != self.pad_id).sum()

    # -- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def logits_for(self, taxonomy: Taxonomy, features: torch.Tensor) -> torch.Tensor:
        was_training = self.training
        self.eval()
        out = [self.scores(features[i:i + 256].float(), taxonomy) for i in range(0, len(features), 256)]
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, len(taxonomy))

    @torch.no_grad()
    def logits_and_texts(self, features: torch.Tensor, taxonomy: Taxonomy | None = None
                         ) -> tuple[torch.Tensor, list[str]]:
        """Class scores and the freely generated sentence, from one encoder pass per image."""
        from transformers.modeling_outputs import BaseModelOutput

        taxonomy = taxonomy or self.taxonomy
        was_training = self.training
        self.eval()
        with self._autocast():
            hidden, mask = self.encode(features.float(), [self.view_tokens(taxonomy)[0]] * len(features))
            scores = self.scores_from_states(hidden, mask, taxonomy).float()
            out = self.bart.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
                                     max_new_tokens=self.config.max_new_tokens, num_beams=1, do_sample=False,
                                     decoder_start_token_id=self.start_id, bos_token_id=self.bos_id,
                                     eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        self.train(was_training)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return scores, [" ".join(t.split()) for t in texts]

    @property
    def generates_text(self) -> bool:
        return self.config.generate

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, targets: torch.Tensor) -> float:
        """Accuracy over global targets: each image scored under its own task's taxonomy."""
        if len(targets) == 0:
            return float("nan")
        task, cls = self._split(targets)
        correct = 0
        for t, tax in enumerate(self.tasks):
            chosen = task == t
            if chosen.any():
                correct += int((self.logits_for(tax, features[chosen]).argmax(1) == cls[chosen]).sum())
        return correct / len(targets)

    def for_taxonomy(self, target: Taxonomy) -> UGRIEView:
        return UGRIEView(self, target)

    # -- what a checkpoint holds: the trained tensors only ------------------------------------------
    def _saved_names(self) -> set[str]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}  # tied weights appear once
        if self.config.tune == "full":
            names |= {n for n, _ in self.named_buffers() if n.endswith("final_logits_bias")}
        return names

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        full = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        keep = {prefix + n for n in self._saved_names()}
        return OrderedDict((k, v) for k, v in full.items() if k in keep)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        expected = self._saved_names()
        if strict and set(state_dict) != expected:
            missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
            raise RuntimeError(f"Error(s) in loading state_dict for UGRIE: missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]} (tune={self.config.tune})")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def describe(self) -> dict:
        config = {k: v for k, v in dataclasses.asdict(self.config).items()
                  if k not in ("bart_config", "templates", "taxonomies")}
        return {"method": self.name, **config, "tasks": [t.name for t in self.tasks]}


def _native_bf16() -> bool:
    """bf16 only where it measurably beats fp32 here: the same probe as the encoders' ``--precision auto``
    (a CPU may report avx512_bf16 yet run bf16 matmul slower than fp32, as this project's Xeon does)."""
    from emoclip.encoder.precision import resolved_for_this_machine

    return resolved_for_this_machine("auto", "cpu") == "bf16"


class UGRIEView:
    """A UGRIE model seen under another taxonomy (a ``Classifier`` for tagging and evaluation)."""

    def __init__(self, method: UGRIE, taxonomy: Taxonomy) -> None:
        self.method = method
        self.taxonomy = taxonomy

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.method.logits_for(self.taxonomy, features)

    def logits_and_texts(self, features: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        return self.method.logits_and_texts(features, self.taxonomy)

    @property
    def generates_text(self) -> bool:
        return self.method.generates_text

    def describe(self) -> dict:
        return {**self.method.describe(), "inference_taxonomy": self.taxonomy.name}
