"""The training recipe: one ``TrainConfig`` for every trainable method (the ``train:`` section).

Each field says its type, range and help once; the ``train`` flags (``--epochs``, ``--lr``, …),
the config files' ``train:`` section, sweep grids and ``emoclip.train(...)`` are all checked
against it. The optimiser and scheduler names are the keys of the trainer's registries
(``emoclip.training.trainer.OPTIMIZERS``/``SCHEDULERS``); a contract test keeps them equal, so the
CLI's choices are never copied by hand. A method's paper recipe (its card's ``train_defaults``)
fills in what the user does not set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from emoclip.core.errors import EmoclipError
from emoclip.core.options import check_options, option, validate

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "plateau", "cosine")
MONITORS = ("val_accuracy", "val_loss")
TARGETS = ("labels", "votes")
FIX = "fix the flag or the config's train section"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """How a method is trained: the optimiser, the schedule, model selection and the data protocol."""

    epochs: int = option(10, "Training epochs (the method's recipe sets its own).", min=1)
    batch_size: int = option(32, "Training images per optimiser step.", min=1)
    optimizer: str = option("sgd", "Optimiser (sgd uses --momentum).", choices=OPTIMIZERS)
    lr: float = option(0.002, "Learning rate. Giving --lr trains at this one rate: it turns off the recipe's "
                              "lr grid (PT-DPC's recipe tries 0.1, 0.01 and 0.001 and keeps the best on "
                              "validation).", min=0, min_open=True)
    momentum: float = option(0.9, "SGD momentum.", min=0, max=1, max_open=True)
    weight_decay: float = option(0.0, "L2 weight decay of the optimiser.", min=0)
    scheduler: str = option("none", "Learning-rate schedule: none, step (×gamma every step_size epochs), plateau "
                                    "(×gamma when the monitor stalls for patience epochs), cosine (after "
                                    "warmup_epochs at warmup_lr).", choices=SCHEDULERS)
    step_size: int = option(20, "step schedule: epochs between decays.", min=1)
    gamma: float = option(0.1, "step and plateau schedules: the decay factor.", min=0, max=1, min_open=True)
    patience: int = option(3, "plateau schedule: epochs without improvement of the monitor before a decay.", min=0)
    warmup_epochs: int = option(0, "cosine schedule: epochs at a constant warmup_lr first (CoOp: 1 at 1e-5).",
                                min=0)
    warmup_lr: float = option(1e-5, "cosine schedule: the warm-up learning rate.", min=0, min_open=True)
    seed: int = option(0, "Seed of everything sampled or initialised (validation split, few-shot draw, epoch "
                          "order, initial weights).")
    val_fraction: float = option(0.1, "Part of train held out (stratified) for model selection; 0: none, the "
                                      "last epoch is kept.", min=0, max=1, max_open=True)
    monitor: str = option("val_accuracy", "The validation figure that picks the best epoch and drives plateau "
                                          "and early stopping.", choices=MONITORS)
    early_stopping: int = option(0, "Stop after this many epochs without improvement of the monitor; 0: never.",
                                 min=0)
    lr_grid: list[float] | None = option(None, "Several learning rates: one run each (in <out>/lr-<value>/), the "
                                               "best on validation is kept. --lr turns it off.",
                                         min=0, min_open=True)
    shots: int = option(0, "Few-shot: K training images per class, drawn with the seed; 0: all.", min=0)
    target: str = option("labels", "Train on the labels, or on the annotators' vote distributions (votes).",
                         choices=TARGETS)

    def __post_init__(self) -> None:
        """Refuse values that would fail mid-run or train nothing (0 epochs, lr ≤ 0, batch size 0)."""
        validate(self, "training", FIX)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> TrainConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(options, dict):
            raise EmoclipError(f"the train section must be a mapping of option: value; known: {', '.join(known)}")
        unknown = sorted(map(str, set(options) - set(known)))
        if unknown:
            raise EmoclipError(f"unknown training option {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**check_options(cls, options, "training", FIX))
