"""`emoclip train`, `sweep` and `aggregate`: training runs, grids of runs, and their tables."""

from __future__ import annotations

import json

import click

from emoclip.cli.common import (
    backbone_options,
    cache_options,
    dataset_options,
    exit_if_lost,
    handle_errors,
    speed_options,
)
from emoclip.core.errors import EmoclipError, shorten


@click.command("train")
@click.option("--config", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="YAML/TOML experiment config(s) (see configs/), merged in order; command-line options override.")
@click.option("--method", default=None, help="Method to train (`emoclip methods`).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A method option, e.g. --set weight=cos01 (repeatable).")
@dataset_options
@click.option("--taxonomy", "-t", default=None, help="Taxonomy the model predicts (default emotionroi6).")
@click.option("--label-taxonomy", default=None,
              help="Taxonomy of the dataset's labels when it differs from --taxonomy (finer labels are mapped "
                   "up through parents, e.g. emotion labels trained as polarity).")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Few-shot: K training images per class, drawn with --seed (recorded in model.json).")
@click.option("--target", type=click.Choice(["labels", "votes"]), default=None,
              help="Train on the labels, or on the annotators' vote distributions (needs --votes or "
                   "votes in the data).")
@backbone_options
@cache_options
@speed_options(precision=None, decode=None)
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default=None)
@click.option("--scheduler", type=click.Choice(["none", "step", "plateau"]), default=None)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Part of train held out for model selection.")
@click.option("--also", multiple=True, help="Coarser levels to score on the test split (e.g. polarity).")
@click.option("--name", default=None, help="Row label in `emoclip aggregate`.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last epoch.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out (without it, one is refused).")
@click.option("--progress/--no-progress", default=None)
@handle_errors
def train_command(config_files, method, sets, root, split_file, manifests, layout, fold, label_file, votes, taxonomy,
                  label_taxonomy, shots, target, model, pretrained, device, cache_dir, no_cache, precision, epochs,
                  batch_size, lr, optimizer, scheduler, weight_decay, seed, val_fraction, also, name, out, resume,
                  overwrite, progress) -> None:
    """Train a method on cached features, keep the best-on-validation checkpoint, score it on test."""
    from pathlib import Path

    import yaml

    from emoclip.methods.ugrie.bart_weights import preflight_experiment

    options = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise EmoclipError(f"--set needs KEY=VALUE, got '{shorten(item, 80)}'; write e.g. --set lr=0.01")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise EmoclipError(f"--set {shorten(item, 80)}: the value is not valid YAML; quote it") from None
    preflight_experiment(list(config_files), method, options)  # BART offline: answer before torch loads

    from emoclip.training.experiment import merge, read_configs, run_experiment
    overrides = {
        "method": method, "options": options, "taxonomy": taxonomy, "label_taxonomy": label_taxonomy, "name": name,
        "also": list(also) or None,
        "data": {"root": root, "split_file": split_file, "manifests": list(manifests) or None, "layout": layout,
                 "fold": fold, "label_file": label_file, "votes": votes},
        "backbone": {"model": model, "pretrained": pretrained, "precision": precision},  # default fp32
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_grid": [] if lr is not None else None,
                  "optimizer": optimizer,
                  "scheduler": scheduler, "weight_decay": weight_decay, "seed": seed, "val_fraction": val_fraction,
                  "shots": shots, "target": target},
    }
    config = merge(read_configs(list(config_files)), overrides)
    summary = run_experiment(config, out, device, cache_dir, no_cache, resume, progress, overwrite=overwrite)
    t = summary["training"]
    test = summary.get("test", {})
    per_epoch = ""
    log_file = Path(out) / "log.jsonl"
    history = [json.loads(line) for line in log_file.read_text().splitlines()] if t.get("epochs") else []
    if history:
        per_epoch = f", {sum(h['seconds'] for h in history) / len(history):.2f} s/epoch"
    scores = " ".join(f"{k}={100 * v:.2f}" if k.endswith(("accuracy", "f1")) else f"{k}={v:.4f}"
                      for k, v in test.items())
    fitted = (f"{t['epochs']} epochs{per_epoch}, best epoch {t.get('best_epoch')}" if t.get("epochs")
              else "fitted directly" + "".join(f", {k} {v:g}" for k, v in t.get("fit", {}).items()
                                               if isinstance(v, int | float)))
    if t.get("lr_selection"):
        fitted += f", lr {t['lr_selection']['chosen']:g} chosen on validation"
    val = (f"val acc {100 * t['val_accuracy']:.2f}" if isinstance(t.get("val_accuracy"), int | float)
           else "no validation" if t.get("validation") else "nothing chosen on validation")
    click.echo(f"{summary['method']}: {fitted} ({val}); "
               f"test {scores or 'not scored'} → {out}")
    lost = summary.get("lost", {})
    exit_if_lost(sum(lost.values()), sum(summary.get("listed", {}).values()), f"{out}/summary.json")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metric", type=click.Choice(["accuracy", "balanced_accuracy", "macro_f1"]), default="accuracy",
              show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Also write the table here (.md) and its figures beside it (.json).")
@handle_errors
def aggregate(runs, metric, out) -> None:
    """Mean ± std over seeds and folds in the layout of the papers' tables (RUNS: run folders or folders of them).

    Runs differing only in seed and fold form one cell; other backbones, weights, precision, few-shot K
    or data are separate, labelled rows or columns.
    """
    import json
    from pathlib import Path

    from emoclip.core.atomic import atomic_write_text
    from emoclip.evaluation.aggregate import aggregate as build
    from emoclip.evaluation.aggregate import load_runs, markdown_table

    table = build(load_runs(runs), metric)
    text = markdown_table(table, metric)
    click.echo(text, nl=False)
    if out:
        atomic_write_text(out, text)
        atomic_write_text(Path(out).with_suffix(".json"), json.dumps(table, indent=2) + "\n")


@click.command()
@click.argument("grid", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", default="auto", show_default=True, envvar="EMOCLIP_DEVICE", help="auto, cpu, cuda or cuda:N.")
@cache_options
@click.option("--dry-run", is_flag=True, help="List the runs that would run, run nothing.")
@click.option("--progress/--no-progress", default=None)
@handle_errors
def sweep(grid, device, cache_dir, no_cache, dry_run, progress) -> None:
    """Run a grid of methods × seeds × shots × folds from a YAML file (skipping finished runs), then aggregate."""
    from emoclip.training.sweep import run_sweep

    run_sweep(grid, device, cache_dir, no_cache, progress, dry_run, echo=click.echo)
