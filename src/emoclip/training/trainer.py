"""One training loop for every trainable method, on cached image features.

Images are encoded once (the feature cache); each epoch only touches features and, for prompt
methods, the text encoder. The loop owns optimisation (SGD with momentum, Adam, AdamW; StepLR or
reduce-on-plateau), model selection on a validation part carved from train (never the test split),
a checkpoint every epoch, ``resume`` after an interruption, a progress bar and a JSONL log.

Reproducibility: the order of epoch *e* comes from a generator seeded with (seed, e), and methods
that sample (contrastive captions) use that generator, so stopping after any epoch and resuming
ends with the same parameters as an uninterrupted run.

Model selection and stopping follow the recipe: ``monitor`` is the validation figure that picks the
best epoch, drives reduce-on-plateau and early stopping (``val_accuracy``, or ``val_loss`` as the
CLIP-E paper does); ``early_stopping`` > 0 ends training after that many epochs without improvement.
Targets are class indices, or (``target: votes``) N × C distributions of the annotators' votes: every
method's loss then is the soft cross-entropy ``-Σ_c p_c log q_c`` (equal to KL(p ‖ q) up to the
votes' entropy, a constant), while validation still scores the data's single labels.

Crash safety: everything needed to resume — the epoch, the weights, the optimiser and scheduler,
the best weights so far, the history — is one file, ``last.safetensors`` (the JSON state in its
metadata), replaced atomically once per epoch: that rename is the epoch's commit point. The files
derived from it (``model.safetensors``/``model.json``, ``log.jsonl``) follow; a kill between them
is repaired by ``--resume``, which rewrites them from the state, and ``load_checkpoint`` refuses a
model whose weights and metadata name different epochs. Resuming checks that the state belongs to
the same method and options.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from emoclip.core.atomic import atomic_write_text
from emoclip.core.errors import EmoclipError
from emoclip.core.strict_json import dumps, finite
from emoclip.methods.base import Method
from emoclip.methods.checkpoint import save_checkpoint, save_tensors
from emoclip.schema.training import MONITORS, TARGETS, TrainConfig  # noqa: F401 - the typed recipe (schema)

log = logging.getLogger("emoclip")
STATE_WEIGHTS = "last.safetensors"
STATE_FORMAT = "emoclip-train-state"
LOG_FILE = "log.jsonl"


OPTIMIZERS: dict[str, Callable[[list, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
}
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig], Any]] = {
    "none": lambda opt, c: None,
    "step": lambda opt, c: torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma),
    "plateau": lambda opt, c: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min" if c.monitor == "val_loss" else "max", factor=c.gamma, patience=c.patience),
    "cosine": lambda opt, c: _cosine(opt, c),
}


def _cosine(optimizer: torch.optim.Optimizer, c: TrainConfig):
    """Cosine annealing over the epochs after a constant warm-up (CoOp's schedule), stepped per epoch."""
    base = c.lr
    total = max(c.epochs - c.warmup_epochs, 1)

    def factor(epoch: int) -> float:
        if epoch < c.warmup_epochs:
            return c.warmup_lr / base
        return 0.5 * (1 + math.cos(math.pi * (epoch - c.warmup_epochs) / total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def _read_state(path: Path, method: Method, config: TrainConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """The saved training state, checked to be whole and to belong to this method and these options."""
    from emoclip.methods.checkpoint import read_tensors

    tensors, metadata = read_tensors(path, "training state")
    try:
        state = json.loads(metadata["state"])
        epoch = int(metadata["epoch"])
        consistent = (metadata.get("format") == STATE_FORMAT and state["epoch"] == epoch
                      and len(state["history"]) == epoch + 1 and {"val_accuracy", "epoch"} <= set(state["best"]))
    except (KeyError, ValueError, TypeError):
        consistent = False
    if not consistent:
        raise EmoclipError(f"training state {path} is damaged; delete it to start over (or run without --resume)")
    if state["method"] != method.name or state["method_config"] != _as_saved(dataclasses.asdict(method.config)):
        raise EmoclipError(f"{path.parent} holds a {state['method']} run with other method options; resume it with "
                           "the same --method/--set options, or train into another --out")
    saved = {k: v for k, v in state["train_config"].items() if k != "epochs"}
    changed = sorted(k for k, v in dataclasses.asdict(config).items() if k != "epochs" and saved.get(k) != v)
    if changed:
        raise EmoclipError(f"{path.parent} was trained with other {', '.join(changed)} "
                           f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); resume with the same "
                           "options (only --epochs may change), or train into another --out")
    return state, tensors


def _as_saved(value: Any) -> Any:
    """``value`` as it reads back from the state's JSON (int dict keys become strings, tuples lists), so a
    config compares equal to its own saved copy (UGRIE's ``bart_config.id2label`` has int keys)."""
    return json.loads(dumps(value))


def _write_derived(out: Path, method: Method, best_tensors: dict[str, torch.Tensor] | None, best: dict,
                   history: list[dict], meta: dict, monitor: str) -> None:
    """The files that follow the committed state: the best model (when it changed) and the log."""
    if best_tensors is not None and best["epoch"] >= 1:
        training = {"best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "monitor": monitor,
                    "best_value": best.get("value")}
        save_checkpoint(out, method, finite({**meta, "training": training}), tensors=best_tensors)
    atomic_write_text(out / LOG_FILE, "".join(dumps(r) + "\n" for r in history))


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices of targets that are indices already or distributions (their most voted class)."""
    return y.argmax(1) if y.ndim == 2 else y


def _accuracy(method: Method, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    return method.accuracy(x, hard_labels(y))  # a method may score its own way (ugrie: per task)


@torch.no_grad()
def _validation_loss(method: Method, x: torch.Tensor, y: torch.Tensor, config: TrainConfig) -> float:
    """The method's own training loss on the validation part (fixed sampling, eval mode)."""
    if len(y) == 0:
        return float("nan")
    was_training = method.training
    method.eval()
    generator = torch.Generator().manual_seed(config.seed)
    total = 0.0
    for start in range(0, len(y), config.batch_size):
        index = torch.arange(start, min(start + config.batch_size, len(y)))
        features, targets = x[index], y[index]
        batch = {"features": features, "generator": generator, "index": index, "paths": None}
        logits = method(features) if method.loss_uses_logits else None
        total += method.loss(logits, targets, batch).item() * len(index)
    method.train(was_training)
    return total / len(y)


def _better(monitor: str, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if monitor == "val_loss" else value > best


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
    inputs = training_inputs(method, train_paths)
    if inputs:
        meta["inputs"] = inputs
    validation = ({"validation": f"none: no validation images (val_fraction {config.val_fraction:g}); "
                                 "the last epoch is kept and no validation figure exists"} if len(vy) == 0 else {})

    direct = method.fit_direct(train_data, val_data)
    if direct is not None:
        summary = {"epochs": 0, "best_epoch": 0, "val_accuracy": direct.get("val_accuracy"),
                   "train_accuracy": _accuracy(method, x, y), "fit": direct, **validation,
                   "seconds": round(time.perf_counter() - started, 3), **({"inputs": inputs} if inputs else {})}
        summary = finite(summary)
        atomic_write_text(out / LOG_FILE, dumps(summary) + "\n")
        save_checkpoint(out, method, finite({**meta, "training": summary}))
        return summary

    params = method.trainable_parameters()
    if not params:
        raise EmoclipError(f"method {method.name} has nothing to train; choose another --method or options")
    optimizer = _choose(OPTIMIZERS, config.optimizer, "optimizer")(params, config)
    scheduler = _choose(SCHEDULERS, config.scheduler, "scheduler")(optimizer, config)
    start_epoch, history = 0, []
    best: dict[str, Any] = {"val_accuracy": -1.0, "val_loss": None, "value": None, "epoch": -1, "stale": 0}

    best_tensors = {k: v.detach().clone() for k, v in method.state_dict().items()}
    if resume and (out / STATE_WEIGHTS).is_file():
        state, tensors = _read_state(out / STATE_WEIGHTS, method, config)
        method.load_state_dict({k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")})
        best_tensors = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        _write_derived(out, method, best_tensors, best, history, meta, config.monitor)  # repair a kill after commit
        log.info("resuming after epoch %d", start_epoch)
    elif resume:
        log.warning("--resume: no saved state in %s, starting from scratch", out)

    last_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    if config.early_stopping and best.get("stale", 0) >= config.early_stopping:
        last_epoch = start_epoch  # the interrupted run had already stopped early
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
        val_loss = _validation_loss(method, vx, vy, config) if config.monitor == "val_loss" else float("nan")
        watched = val_loss if config.monitor == "val_loss" else val_acc
        # a figure that was not computed is left out (val_loss unless monitored) or null (no validation part)
        record = {"epoch": epoch + 1, "loss": total / max(seen, 1), "val_accuracy": finite(val_acc),
                  **({"val_loss": finite(val_loss)} if config.monitor == "val_loss" else {}),
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - epoch_started, 3)}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if not math.isnan(watched):
                scheduler.step(watched)
        elif scheduler is not None:
            scheduler.step()
        history.append(record)
        log.info("epoch %d: loss %.4f, %s%s", epoch + 1, record["loss"],
                 f"val acc {val_acc:.4f}" if len(vy) else "no validation",
                 f", val loss {val_loss:.4f}" if config.monitor == "val_loss" and len(vy) else "")
        improved = len(vy) == 0 or _better(config.monitor, watched, best.get("value"))
        if improved:
            best = finite({"val_accuracy": val_acc, "val_loss": val_loss, "value": watched, "epoch": epoch + 1,
                           "stale": 0})
            best_tensors = {k: v.detach().clone() for k, v in method.state_dict().items()}
        else:
            best["stale"] = best.get("stale", 0) + 1
        opt_tensors, opt_plain = _flatten_optimizer(optimizer.state_dict())
        state = {"epoch": epoch, "best": best, "history": history, "optimizer": opt_plain,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "method": method.name, "method_config": dataclasses.asdict(method.config),
                 "train_config": dataclasses.asdict(config)}
        save_tensors({**{f"method.{k}": v for k, v in method.state_dict().items()},
                      **{f"best.{k}": v for k, v in best_tensors.items()}, **opt_tensors},
                     out / STATE_WEIGHTS, {"format": STATE_FORMAT, "epoch": str(epoch), "state": dumps(state)})
        _write_derived(out, method, best_tensors if improved else None, best, history, meta, config.monitor)
        if config.early_stopping and best.get("stale", 0) >= config.early_stopping:
            log.info("early stop after epoch %d: %s has not improved for %d epochs", epoch + 1, config.monitor,
                     config.early_stopping)
            break
    stopped_early = bool(config.early_stopping) and best.get("stale", 0) >= config.early_stopping
    method.eval()
    return finite({"epochs": len(history), "best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
                   "monitor": config.monitor, "best_value": best.get("value"), "stopped_early": stopped_early,
                   **validation, "history": history, "seconds": round(time.perf_counter() - started, 3),
                   **({"inputs": inputs} if inputs else {})})


def training_inputs(method: Method, train_paths: list[str] | None) -> dict:
    """What the method drew from beyond the features (CLIP-E's image captions: digest, rows, images
    matched), checked against the training images before the first epoch; {} when nothing.

    A method opts in with ``bind_training_images(paths) -> dict`` (it may refuse, e.g. captions that
    match no training image); the result is recorded in model.json, the summary and the run record.
    """
    bind = getattr(method, "bind_training_images", None)
    return bind(list(train_paths or [])) or {} if bind is not None else {}
