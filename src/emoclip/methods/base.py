"""The small interface every trainable method implements, and the registry that names them.

A method is a ``torch.nn.Module`` holding only its own tensors (the backbone is kept outside its
state, so a checkpoint is just the trained part). It maps normalised image features to logits
over its taxonomy; ``train.py`` owns the loop. Methods register by name, the timm way::

    @register_method("ptdpc")
    class PTDPC(Method): ...

and ``create_method(name, backbone, taxonomy, config)`` builds one; tests run every registered
method through the same checks. What a method *is* — its options with types, ranges and help, its
summary, its paper's training recipe, its capabilities — is its card in ``emoclip.schema.methods``
(readable without torch); ``register_method`` takes those from the card and refuses a name without
one, so the listing and the implementation cannot drift apart.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from emoclip.core.errors import EmoclipError
from emoclip.encoder.backbone import Backbone
from emoclip.labels.taxonomy import Taxonomy
from emoclip.schema.methods import METHOD_CARDS, MethodCard, MethodConfig

_REGISTRY: dict[str, type[Method]] = {}


class Method(nn.Module):
    """Base class: features → logits, a loss, and the defaults of its paper's training recipe."""

    name: ClassVar[str] = ""
    card: ClassVar[MethodCard]
    summary: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # The optimiser recipe of the method's paper; the trainer's defaults for it.
    train_defaults: ClassVar[dict[str, Any]] = {}
    # Can train on several taxonomies at once (``emoclip.training.unified``; targets index the tasks' classes).
    multi_taxonomy: ClassVar[bool] = False
    # The trainer computes ``forward`` logits for ``loss`` only when the loss reads them.
    loss_uses_logits: ClassVar[bool] = True
    backbone: Backbone  # set in __init__ outside nn.Module's bookkeeping (declared for the type checker)

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> None:
        """Refuse unobtainable external weights (given the options) before anything heavy loads."""

    def __init__(self, backbone: Backbone, taxonomy: Taxonomy, config: MethodConfig) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # not a submodule: never trained, never saved
        self.taxonomy = taxonomy
        self.config = config

    # -- what a method defines --------------------------------------------------------------------
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """N × C logits for N normalised image features (with gradients, for training)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor | None, targets: torch.Tensor, batch: dict) -> torch.Tensor:
        """Training loss; plain cross-entropy unless a method says otherwise.

        ``logits`` is ``forward(features)``, or None for a method whose ``loss_uses_logits`` is False.
        """
        assert logits is not None, f"method {self.name} computes its loss from logits"
        return F.cross_entropy(logits, targets)

    def fit_direct(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]
                   ) -> dict | None:
        """Methods with a closed-form or full-batch fit (the linear probe) do it here; None = use the loop."""
        return None

    # -- shared ---------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Inference logits (the ``Classifier`` protocol used by tagging and evaluation)."""
        was_training = self.training
        self.eval()
        out = torch.cat([self(features[i:i + 256].float()) for i in range(0, len(features), 256)]) \
            if len(features) else torch.empty(0, len(self.taxonomy))
        self.train(was_training)
        return out

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, targets: torch.Tensor) -> float:
        """Top-1 accuracy on training-style targets (model selection on the validation part)."""
        if len(targets) == 0:
            return float("nan")
        return (self.logits(features).argmax(1) == targets).float().mean().item()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> dict:
        return {"method": self.name, **dataclasses.asdict(self.config)}


_INIT_SEED: contextvars.ContextVar[int] = contextvars.ContextVar("emoclip_init_seed", default=0)


@contextlib.contextmanager
def init_seed(seed: int) -> Iterator[None]:
    """Methods built inside draw their initial weights (heads, mappings, LoRA, random prompts) from ``seed``:
    the run's ``--seed`` reaches every initialisation, so "mean ± std over seeds" includes it."""
    token = _INIT_SEED.set(int(seed))
    try:
        yield
    finally:
        _INIT_SEED.reset(token)


def current_init_seed() -> int:
    """The seed methods initialise from now (``init_seed``; 0 outside it, as before seeds reached methods)."""
    return _INIT_SEED.get()


def seeded_init(build: Callable[[], nn.Module], seed: int | None = None) -> nn.Module:
    """Build a module from a fixed seed (default: ``current_init_seed()``), leaving the global RNG as it
    was: the same config and seed always start from the same weights (reproducible runs, resume),
    whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(current_init_seed() if seed is None else seed)
        return build()


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Register an implementation under its card's name; the card supplies config, summary, recipe and
    capabilities (a class naming another ``Config`` than its card is a bug, refused at import)."""
    def decorate(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"method '{name}' is registered twice")
        card = METHOD_CARDS.get(name)
        if card is None or not card.trainable:
            raise ValueError(f"method '{name}' has no trainable card in emoclip.schema.methods; add one")
        if cls.Config is not MethodConfig and cls.Config is not card.config:
            raise ValueError(f"method '{name}': Config {cls.Config.__name__} is not its card's {card.config.__name__}")
        cls.name, cls.card, cls.Config, cls.summary = name, card, card.config, card.summary
        cls.train_defaults, cls.multi_taxonomy = dict(card.train_defaults), card.multi_taxonomy
        _REGISTRY[name] = cls
        return cls
    return decorate


# The modules that register the trainable methods, as data: base imports them by name when the
# registry is first read, so it never depends on the method modules it sits below (they import base).
METHOD_MODULES = ("emoclip.methods.clipe", "emoclip.methods.linear_probe", "emoclip.methods.prompt",
                  "emoclip.methods.ugrie.model")


def list_methods() -> dict[str, type[Method]]:
    for module in METHOD_MODULES:
        importlib.import_module(module)  # registration happens on import
    return dict(sorted(_REGISTRY.items()))


def make_config(cls: type[Method], options: dict[str, Any] | None) -> MethodConfig:
    """The method's config from a dict: unknown keys refused with the list of known ones, every value
    type- and range-checked against the card (one line naming the option and its valid values)."""
    from emoclip.core.options import build

    return build(cls.Config, options, f"method '{cls.name}'")


def create_method(name: str, backbone: Backbone, taxonomy: Taxonomy, options: dict[str, Any] | None = None,
                  seed: int | None = None) -> Method:
    """A registered method; ``seed`` (the run's) seeds its initial weights (None: the current ``init_seed``)."""
    methods = list_methods()
    if name not in methods:
        from emoclip.schema.methods import method_card

        if method_card(name).trainable is False:  # refuses unknown names with the list
            raise EmoclipError(f"method '{name}' trains nothing; `emoclip evaluate` scores it (or use one of "
                               f"{', '.join(methods)})")
    cls = methods[name]
    with init_seed(current_init_seed() if seed is None else seed):
        return cls(backbone, taxonomy, make_config(cls, options))
