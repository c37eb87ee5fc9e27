"""One training loop for every trainable method, on cached image features.

Images are encoded once (the feature cache); each epoch only touches features and, for prompt
methods, the text encoder. The loop owns optimisation (SGD with momentum, Adam, AdamW; StepLR or
reduce-on-plateau), model selection on a validation part carved from train (never the test split),
a checkpoint every epoch, ``resume`` after an interruption, a progress bar and a JSONL log.

Reproducibility: the order of epoch *e* comes from a generator seeded with (seed, e), and methods
that sample (contrastive captions) use that generator, so stopping after any epoch and resuming
ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from .atomic import atomic_write_text
from .checkpoint import save_checkpoint, save_tensors
from .errors import EmoclipError
from .methods.base import Method

log = logging.getLogger("emoclip")
STATE_WEIGHTS = "last.safetensors"
STATE_META = "last.json"
LOG_FILE = "log.jsonl"


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"       # sgd | adam | adamw
    lr: float = 0.002
    momentum: float = 0.9        # sgd
    weight_decay: float = 0.0
    scheduler: str = "none"      # none | step | plateau
    step_size: int = 20          # step
    gamma: float = 0.1           # step, plateau
    patience: int = 3            # plateau (epochs without validation gain)
    seed: int = 0
    val_fraction: float = 0.1    # carved from train, stratified, for model selection

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> TrainConfig:
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise EmoclipError(f"unknown training option {', '.join(unknown)}; known: {', '.join(fields)}")
        return cls(**options)


OPTIMIZERS: dict[str, Callable[[list, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
}
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig], Any]] = {
    "none": lambda opt, c: None,
    "step": lambda opt, c: torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma),
    "plateau": lambda opt, c: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=c.gamma,
                                                                         patience=c.patience),
}


def _choose(registry: dict, key: str, what: str):
    if key not in registry:
        raise EmoclipError(f"unknown {what} '{key}'; use one of {', '.join(registry)}")
    return registry[key]


# -- optimiser state without pickle ---------------------------------------------------------------
def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, entry in state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                plain["state"][str(index)][name] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def _accuracy(method: Method, x: torch.Tensor, y: torch.Tensor) -> float:
    return method.accuracy(x, y)


def train(method: Method, train_data: tuple[torch.Tensor, torch.Tensor], val_data: tuple[torch.Tensor, torch.Tensor],
          config: TrainConfig, out: str | Path, resume: bool = False, progress: bool | None = None,
          extra_meta: dict | None = None, stop_after: int | None = None,
          train_paths: list[str] | None = None) -> dict:
    """Train ``method``; the best-on-validation weights end in ``out/model.safetensors``.

    ``stop_after`` ends the run after that many epochs of this call (used to test resuming).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = train_data
    vx, vy = val_data
    torch.manual_seed(config.seed)
    meta = {"train_config": dataclasses.asdict(config), **(extra_meta or {})}
    started = time.perf_counter()

    direct = method.fit_direct(train_data, val_data)
    if direct is not None:
        summary = {"epochs": 0, "best_epoch": 0, "val_accuracy": direct.get("val_accuracy", float("nan")),
                   "train_accuracy": _accuracy(method, x, y), "fit": direct,
                   "seconds": round(time.perf_counter() - started, 3)}
        atomic_write_text(out / LOG_FILE, json.dumps(summary) + "\n")
        save_checkpoint(out, method, {**meta, "training": summary})
        return summary

    params = method.trainable_parameters()
    if not params:
        raise EmoclipError(f"method {method.name} has nothing to train")
    optimizer = _choose(OPTIMIZERS, config.optimizer, "optimizer")(params, config)
    scheduler = _choose(SCHEDULERS, config.scheduler, "scheduler")(optimizer, config)
    start_epoch, best, history = 0, {"val_accuracy": -1.0, "epoch": -1}, []

    if resume and (out / STATE_META).is_file():
        state_meta = json.loads((out / STATE_META).read_text())
        tensors = load_file(str(out / STATE_WEIGHTS))
        method.load_state_dict({k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")})
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state_meta["optimizer"]))
        if scheduler is not None and state_meta.get("scheduler") is not None:
            scheduler.load_state_dict(state_meta["scheduler"])
        start_epoch, best, history = state_meta["epoch"] + 1, state_meta["best"], state_meta["history"]
        log.info("resuming after epoch %d", start_epoch)
    elif resume:
        log.warning("--resume: no saved state in %s, starting from scratch", out)

    last_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(y), generator=generator)
        method.train()
        total, seen = 0.0, 0
        epoch_started = time.perf_counter()
        batches = range(0, len(order), config.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False, file=sys.stderr,
                   disable=(None if progress is None else not progress))
        for start in bar:
            index = order[start:start + config.batch_size]
            features, targets = x[index], y[index]
            logits = method(features) if method.loss_uses_logits else None
            batch = {"features": features, "generator": generator, "index": index,
                     "paths": [train_paths[i] for i in index.tolist()] if train_paths else None}
            loss = method.loss(logits, targets, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        val_acc = _accuracy(method, vx, vy)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_acc)
        elif scheduler is not None:
            scheduler.step()
        record = {"epoch": epoch + 1, "loss": total / max(seen, 1), "val_accuracy": val_acc,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - epoch_started, 3)}
        history.append(record)
        log.info("epoch %d: loss %.4f, val acc %.4f", epoch + 1, record["loss"], val_acc)
        improved = len(vy) == 0 or val_acc > best["val_accuracy"]
        if improved:
            best = {"val_accuracy": val_acc, "epoch": epoch + 1}
            save_checkpoint(out, method, {**meta, "training": {"best_epoch": epoch + 1, "val_accuracy": val_acc}})
        opt_tensors, opt_plain = _flatten_optimizer(optimizer.state_dict())
        save_tensors({**{f"method.{k}": v for k, v in method.state_dict().items()}, **opt_tensors},
                     out / STATE_WEIGHTS)
        atomic_write_text(out / STATE_META, json.dumps({
            "epoch": epoch, "best": best, "history": history, "optimizer": opt_plain,
            "scheduler": scheduler.state_dict() if scheduler is not None else None}) + "\n")
        atomic_write_text(out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in history))
    method.eval()
    return {"epochs": len(history), "best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
            "history": history, "seconds": round(time.perf_counter() - started, 3)}
