"""Every method as data: its options (types, ranges, help), its capabilities and its paper's recipe.

The method registry is split in two on purpose. The *cards* here say everything a listing, a
config check or a CLI choice needs and import nothing heavy: ``emoclip methods`` and
``emoclip.list_methods()`` read them without torch. The *implementations* (``torch.nn.Module``
subclasses in ``emoclip.methods``) register under the same names with
``@register_method(name)``, which takes the card's config, summary, recipe and capabilities, and
refuses a name that has no card: the two halves cannot drift apart.

Zero-shot is a card like the others (``trainable=False``): experiments, sweeps and the CLI look
it up instead of special-casing its name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from emoclip.core.errors import EmoclipError
from emoclip.core.options import OptionInfo, describe, option

DEFAULT_TEMPLATE = "a photo seems to express a feeling of {}"


DEFAULT_BART = "facebook/bart-base"  # UGRIE's BART: a Hugging Face name (methods/ugrie/bart_weights.py)


@dataclass
class MethodConfig:
    """Base for method configs (dataclasses: every field is a documented, serialisable option)."""


# -- zero-shot ------------------------------------------------------------------------------------
@dataclass
class ZeroShotConfig(MethodConfig):
    templates: str | list[str] | None = option(None, "Prompt template set (`emoclip templates`), a file of "
                                               f"templates, or one template with {{}}; default '{DEFAULT_TEMPLATE}'.")
    synonyms: bool = option(False, "Average prompts over each class's synonyms too.")


# -- linear probe ---------------------------------------------------------------------------------
def _l2_rule(value: Any) -> bool:
    return isinstance(value, int | float) and (value == -1 or value >= 0)


@dataclass
class LinearProbeConfig(MethodConfig):
    l2_grid: tuple[float, ...] = option((1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
                                        "L2 strengths λ (λ·‖W‖² added to the mean loss) tried on validation; "
                                        "the best is refitted on train + validation.", min=0)
    max_iter: int = option(200, "L-BFGS iterations per fit.", min=1)
    l2: float = option(-1.0, "A fixed L2 strength (skips the l2_grid search); -1: choose it on validation "
                             "(the chosen value is recorded here).", rule=_l2_rule,
                       rule_text="-1 (choose on validation) or 0 or more")


# -- prompt learning (PT-DPC, CoOp) ---------------------------------------------------------------
WEIGHTS = ("cos", "cos01")
LOSSES = ("ce", "softmax-ce")


@dataclass
class PromptConfig(MethodConfig):
    template: str = option(DEFAULT_TEMPLATE, "Prompt whose words initialise the learnable context ({} is the "
                                             "class name).")
    n_ctx: int = option(0, ">0: that many randomly initialised context tokens instead of the template's words.",
                        min=0)
    instance_specific: bool = option(True, "Compose the prompt per image from its feature (PT-DPC).")
    class_specific: bool = option(True, "One learnable block per class (else one shared block).")
    weight: str = option("cos", "Composition weights: cos (paper eq. 3) or cos01 ((cos+1)/2, the release).",
                         choices=WEIGHTS)
    normalize: bool = option(False, "Divide the composition weights by their sum over classes.")
    learn_sot: bool = option(False, "The start token is part of the learnable block (the release).")
    loss: str = option("ce", "ce, or softmax-ce (the release: softmax before cross-entropy).", choices=LOSSES)
    init_std: float = option(0.02, "Standard deviation of random context (n_ctx > 0).", min=0, min_open=True)
    trim: bool = option(True, "Run the text encoder on the needed positions only (same result, faster).")


@dataclass
class CoOpConfig(PromptConfig):
    template: str = option("a photo of a {}.", "Prompt whose words initialise the learnable context ({} is the "
                                               "class name).")
    instance_specific: bool = option(False, "Compose the prompt per image from its feature (PT-DPC).")
    class_specific: bool = option(False, "One learnable block per class (CoOp's CSC; else one shared block).")


# -- CLIP-E ---------------------------------------------------------------------------------------
SENTIMENT_CAPTION = "a photo that seems to express {}"
# The CLIP-E paper's optimiser for both heads: Adam 1e-3, ×0.1 on a validation-loss plateau, at most 15
# epochs, stopped when the validation loss stops improving (batch 32 CE, 8 contrastive). The patiences
# are emoclip's choice (the paper gives none); configs/methods/clipe-*.yaml carry the same values.
CLIPE_RECIPE: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "scheduler": "plateau", "gamma": 0.1, "patience": 2,
                                "epochs": 15, "monitor": "val_loss", "early_stopping": 3}


@dataclass
class ClipECEConfig(MethodConfig):
    hidden: int = option(512, "Width of the head's hidden ReLU layer.", min=1)


@dataclass
class ClipEContrastiveConfig(MethodConfig):
    hidden: int = option(512, "Width of the head's hidden ReLU layer.", min=1)
    caption: str = option(SENTIMENT_CAPTION, "The sentiment caption (SC) of each class ({} is the class word).")
    synonyms: bool = option(True, "Also one caption per synonym (SSC).")
    image_captions: str = option("", "Optional CSV/TSV of image path and caption (IC); '' for none.")
    init_temperature: float = option(0.07, "Initial temperature of the contrastive loss (learned).",
                                     min=0, min_open=True)


# -- UGRIE ----------------------------------------------------------------------------------------
TUNE_MODES = ("full", "lora", "mapping")
MAPPINGS = ("auto", "mlp", "transformer")
LENGTH_NORMS = ("token-mean", "sum")
UGRIE_PRECISIONS = ("fp32", "bf16", "auto")


@dataclass
class UGRIEConfig(MethodConfig):
    bart: str = option(DEFAULT_BART, "Hugging Face name (downloaded on first use) or a save_pretrained folder.")
    tune: str = option("full", "full, lora (peft, q/v projections) or mapping (BART frozen).", choices=TUNE_MODES)
    mapping: str = option("auto", "mlp, transformer, or auto (transformer when BART is frozen, else mlp).",
                          choices=MAPPINGS)
    prefix_length: int = option(8, "k prefix vectors fed to BART.", min=1)
    mapping_hidden: int = option(0, "MLP mapping hidden width; 0: BART's d_model.", min=0)
    mapping_layers: int = option(2, "Transformer mapping depth.", min=1)
    lora_r: int = option(8, "LoRA rank (tune: lora).", min=1)
    lora_alpha: int = option(16, "LoRA alpha (tune: lora).", min=1)
    length_norm: str = option("token-mean", "Candidate ranking: token-mean (mean token log-prob) or sum "
                                            "(sequence log-prob).", choices=LENGTH_NORMS)
    precision: str = option("fp32", "fp32, bf16 (autocast), or auto (bf16 where it measurably beats fp32 here).",
                            choices=UGRIE_PRECISIONS)
    generate: bool = option(True, "Add the free-generated sentence to predictions.")
    max_new_tokens: int = option(24, "Length limit of the generated sentence.", min=1)
    templates: Any = option("", "'' built-in, a YAML file, or the mapping itself (checkpoints record it).")
    taxonomies: list = option(help="Tasks trained together; []: the taxonomy.", factory=list)
    bart_config: dict | None = option(None, "Recorded by emoclip: BART's architecture.")
    bart_weights: str = option("", "Recorded by emoclip: identity of the base weights.")


# -- the cards ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodCard:
    """A method as data: what it is, what it takes, what it can do, and where its code lives."""

    name: str
    summary: str
    config: type[MethodConfig]
    implementation: str = ""              # "module:Class"; "" for zero-shot (emoclip.methods.zeroshot)
    trainable: bool = True
    train_defaults: dict[str, Any] = field(default_factory=dict)   # the paper's recipe (TrainConfig fields)
    multi_taxonomy: bool = False          # trains on several taxonomies at once (emoclip.training.unified)
    external_weights: tuple[str, ...] = ()  # weights fetched beyond CLIP's (UGRIE: BART)
    aliases: tuple[str, ...] = ()
    recipe: str = ""                      # the shipped recipe reproducing the paper (`--recipe NAME`)

    def options(self) -> list[OptionInfo]:
        return describe(self.config)

    def capabilities(self) -> dict[str, Any]:
        return {"trainable": self.trainable, "multi_taxonomy": self.multi_taxonomy,
                "external_weights": list(self.external_weights)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the listing of ``emoclip methods --json`` and ``emoclip.list_methods()``."""
        return {"name": self.name, "summary": self.summary, "aliases": list(self.aliases),
                "options": [o.to_dict() for o in self.options()], "capabilities": self.capabilities(),
                "train_defaults": dict(self.train_defaults), "recipe": self.recipe or None}


ZERO_SHOT = "zero-shot"
_PTDPC_RECIPE = {"optimizer": "sgd", "lr": 0.01, "lr_grid": [0.1, 0.01, 0.001], "momentum": 0.9, "epochs": 10,
                 "batch_size": 64, "scheduler": "step", "step_size": 3, "gamma": 0.9}
# CoOp's recipe (Zhou et al., IJCV 2022; configs/methods/coop.yaml): SGD 0.002, cosine after one
# warm-up epoch at 1e-5, weight decay 5e-4, batch 32, 200 epochs (its 16-shot setting).
_COOP_RECIPE = {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 200,
                "batch_size": 32, "scheduler": "cosine", "warmup_epochs": 1, "warmup_lr": 1e-5}
# Ours (the UGRIE abstract gives no recipe): AdamW as for BART fine-tuning, a rate the mapping network
# also learns at, few epochs (the datasets are small).
_UGRIE_RECIPE = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01, "epochs": 10, "batch_size": 16}

METHOD_CARDS: dict[str, MethodCard] = {card.name: card for card in (
    MethodCard(ZERO_SHOT, "CLIP with prompts, no training (also `emoclip evaluate`/`predict` without --checkpoint)",
               ZeroShotConfig, trainable=False, aliases=("zeroshot",)),
    MethodCard("linear-probe", "Linear probe: logistic regression, L2 strength chosen on validation",
               LinearProbeConfig, "emoclip.methods.linear_probe:LinearProbe", recipe="linear-probe"),
    MethodCard("ptdpc", "PT-DPC: learnable class-specific prompts composed per image (paper + release variants)",
               PromptConfig, "emoclip.methods.prompt:PTDPC", train_defaults=_PTDPC_RECIPE, recipe="ptdpc-paper"),
    MethodCard("coop", "CoOp: shared or class-specific learnable context tokens (same prompt machinery)",
               CoOpConfig, "emoclip.methods.prompt:CoOp", train_defaults=_COOP_RECIPE, recipe="coop"),
    MethodCard("clipe-ce", "CLIP-E cross-entropy head: feature → 512 ReLU → classes", ClipECEConfig,
               "emoclip.methods.clipe:ClipECrossEntropy", train_defaults={**CLIPE_RECIPE, "batch_size": 32},
               recipe="clipe-ce"),
    MethodCard("clipe-contrastive", "CLIP-E contrastive head: 512 ReLU → D, CLIP loss against caption features; "
               "any taxonomy", ClipEContrastiveConfig, "emoclip.methods.clipe:ClipEContrastive",
               train_defaults={**CLIPE_RECIPE, "batch_size": 8}, recipe="clipe-contrastive"),
    MethodCard("ugrie", "UGRIE: CLIP feature → prefix → BART fills an emotion template; any taxonomy, several at once",
               UGRIEConfig, "emoclip.methods.ugrie.model:UGRIE", train_defaults=_UGRIE_RECIPE, multi_taxonomy=True,
               external_weights=("bart",), recipe="ugrie"),
)}
_ALIASES = {alias: card.name for card in METHOD_CARDS.values() for alias in card.aliases}


def method_names() -> list[str]:
    """Every method name, zero-shot first, then the trainable ones in order (CLI choices)."""
    return list(METHOD_CARDS)


def canonical_name(name: str) -> str:
    """The one name of a method (``zeroshot`` → ``zero-shot``); unknown names pass through."""
    return _ALIASES.get(name, name)


def method_card(name: str) -> MethodCard:
    """The card of ``name`` (or an alias), or one line listing the methods there are."""
    card = METHOD_CARDS.get(canonical_name(str(name)))
    if card is None:
        raise EmoclipError(f"unknown method '{name}'; `emoclip methods` lists them: {', '.join(METHOD_CARDS)}")
    return card


def list_method_cards() -> dict[str, MethodCard]:
    return dict(METHOD_CARDS)


def config_defaults(cls: type[MethodConfig]) -> dict[str, Any]:
    return {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
