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
    schema_option,
    speed_options,
)
from emoclip.schema.training import TrainConfig


def _method_choices() -> list[str]:
    from emoclip.schema.methods import method_names

    return method_names()


def _metrics() -> list[str]:
    from emoclip.evaluation.aggregate import METRICS

    return list(METRICS)


def _recipe_names() -> list[str]:
    from emoclip.recipes import list_recipes

    return sorted(list_recipes())


@click.command("train")
@click.option("--recipe", "recipes", multiple=True, metavar="NAME",
              help=f"A shipped recipe by name ({', '.join(_recipe_names())}), repeatable (e.g. --recipe emotionroi6 "
                   "--recipe ptdpc-paper): merged in order first; --config files and flags override it.")
@click.option("--config", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="YAML/TOML experiment config(s) or recipe names, merged in order after --recipe; command-line "
                   "options override.")
@click.option("--method", default=None, metavar="NAME",
              help=f"Method to train: {', '.join(_method_choices())} (`emoclip methods` lists their options).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A method option, e.g. --set weight=cos01 or --set l2=1e-6 (repeatable; `emoclip methods` lists "
                   "each method's options with their ranges); SECTION.KEY=VALUE sets another section, e.g. "
                   "--set train.early_stopping=3.")
@dataset_options
@click.option("--taxonomy", "-t", default=None,
              help="Taxonomy the model predicts: a built-in name (`emoclip taxonomies`) or a YAML/TOML/JSON "
                   "taxonomy file (default emotionroi6).")
@click.option("--label-taxonomy", default=None,
              help="Taxonomy of the dataset's labels when it differs from --taxonomy (finer labels are mapped "
                   "up through parents, e.g. emotion labels trained as polarity).")
@schema_option(TrainConfig, "shots", type=click.IntRange(min=1))
@schema_option(TrainConfig, "target")
@backbone_options
@cache_options
@speed_options(precision=None, decode=None)
@schema_option(TrainConfig, "epochs")
@schema_option(TrainConfig, "batch_size")
@schema_option(TrainConfig, "lr")
@schema_option(TrainConfig, "optimizer")
@schema_option(TrainConfig, "scheduler")
@schema_option(TrainConfig, "weight_decay")
@schema_option(TrainConfig, "seed", type=int)
@schema_option(TrainConfig, "val_fraction")
@click.option("--also", multiple=True, help="Coarser levels to score on the test split (e.g. polarity).")
@click.option("--name", default=None, help="Row label in `emoclip aggregate`.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last epoch.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out (without it, one is refused).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
@handle_errors
def train_command(recipes, config_files, method, sets, root, split_file, manifests, layout, fold, label_file, votes,
                  taxonomy, label_taxonomy, shots, target, model, pretrained, device, cache_dir, no_cache, precision,
                  epochs, batch_size, lr, optimizer, scheduler, weight_decay, seed, val_fraction, also, name, out,
                  resume, overwrite, progress) -> None:
    """Train a method on cached features, keep the best-on-validation checkpoint, score it on test.

    Options merge in the order: the method's recipe (`emoclip methods`), --recipe(s), --config files,
    then flags and --set. A recipe with an lr grid (PT-DPC's: 0.1, 0.01, 0.001) trains once per rate
    and keeps the best on validation; --lr trains at that one rate instead.
    """
    from pathlib import Path

    from emoclip.api import experiment_config, run
    from emoclip.recipes import recipe_path

    config = experiment_config(
        configs=[str(recipe_path(n)) for n in recipes] + list(config_files), method=method, sets=list(sets),
        taxonomy=taxonomy,
        label_taxonomy=label_taxonomy, name=name, also=list(also) or None,
        data={"root": root, "split_file": split_file, "manifests": list(manifests) or None, "layout": layout,
              "fold": fold, "label_file": label_file, "votes": votes},
        backbone={"model": model, "pretrained": pretrained, "precision": precision},  # default fp32
        train={"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "scheduler": scheduler,
               "weight_decay": weight_decay, "seed": seed, "val_fraction": val_fraction, "shots": shots,
               "target": target})
    # BART is checked before torch loads
    summary = run(config, out, device, cache_dir, no_cache, resume, progress, overwrite=overwrite)
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
@click.option("--metric", type=click.Choice(_metrics()), default="accuracy", show_default=True,
              help="The figure each cell averages.")
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
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--device", default="auto", show_default=True, envvar="EMOCLIP_DEVICE", help="auto, cpu, cuda or cuda:N.")
@cache_options
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Every run's data root (your copy of the dataset), overriding the grid's.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a setting of every run, e.g. --set train.epochs=2 or --set backbone.model=ViT-B-16 "
                   "(repeatable).")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Folder of the runs and the table, overriding the grid's out.")
@click.option("--dry-run", is_flag=True, help="List the runs that would run, run nothing.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
@handle_errors
def sweep(grid, device, cache_dir, no_cache, root, sets, out, dry_run, progress) -> None:
    """Run a grid of methods × seeds × shots × folds from a YAML file or a sweep recipe (e.g. emotion6),
    skipping finished runs, then aggregate.

    Paths in the grid are relative to the grid file; --root, --set and --out override it for every run.
    """
    from pathlib import Path

    from emoclip.recipes import is_recipe_name, recipe_path
    from emoclip.training.sweep import run_sweep

    if not Path(grid).is_file() and is_recipe_name(grid):
        grid = str(recipe_path(grid))  # a shipped sweep by name, from any folder
    run_sweep(grid, device, cache_dir, no_cache, progress, dry_run, echo=click.echo, root=root, sets=sets, out=out)
