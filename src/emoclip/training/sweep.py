"""A paper's table in one command: every run of a grid (methods × seeds × shots × folds), then the table.

The grid is a YAML (or TOML) file::

    out: runs/emotion6                       # every run goes below this folder
    configs: [configs/datasets/emotionroi6.yaml]   # merged first, in order (the data, the taxonomy)
    methods:                                 # each a method config file, a method name, or zero-shot
      - zero-shot
      - configs/methods/ptdpc-paper.yaml
      - {name: coop-csc, config: configs/methods/coop.yaml, options: {class_specific: true}}
    seeds: [1, 2, 3]
    shots: [0, 4, 16]                        # 0: all the training data
    folds: [1, 2, 3, 4, 5]                   # leave out for data with one fixed split
    set: {backbone: {model: ViT-B-32, pretrained: openai}}   # merged last, into every run
    metric: accuracy

Each run lives in ``out/<method>/shots-<K>/fold-<F>/seed-<S>/`` (folders for axes the grid does not
have are left out). A run is finished when its ``summary.json`` exists (written last, atomically);
finished runs are skipped, an interrupted one resumes from its last epoch, so rerunning the sweep
does only what is missing; a finished run whose recorded config differs from an edited grid is
reported (kept, never overwritten). It ends by aggregating every run into ``out/table.md`` and
``table.json``.
Zero-shot does not depend on the seed or the shots: it runs once per fold.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emoclip.core.atomic import atomic_write_text
from emoclip.core.errors import EmoclipError
from emoclip.evaluation.aggregate import METRICS, aggregate, load_runs, markdown_table
from emoclip.training.experiment import ZERO_SHOT, merge, read_configs

log = logging.getLogger("emoclip")
GRID_KEYS = {"out", "configs", "methods", "seeds", "shots", "folds", "set", "metric"}
SUMMARY = "summary.json"
PLANNED = "sweep-config.json"   # the config a run was made with, to notice an edited grid


@dataclass(frozen=True)
class Run:
    """One cell of the grid: its folder and its merged experiment config."""

    label: str
    folder: Path
    config: dict[str, Any]

    @property
    def finished(self) -> bool:
        return (self.folder / SUMMARY).is_file()

    @property
    def stale(self) -> bool:
        """Finished with another config than the grid now asks for (the grid file was edited)."""
        recorded = self.folder / PLANNED
        return self.finished and recorded.is_file() and json.loads(recorded.read_text()) != _plain(self.config)


def _plain(config: dict[str, Any]) -> Any:
    return json.loads(json.dumps(config, default=str))


def read_grid(path: str | Path) -> dict[str, Any]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise EmoclipError(f"sweep file {path} does not exist")
    text = file.read_text(encoding="utf-8")
    try:
        grid = tomllib.loads(text) if file.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise EmoclipError(f"cannot parse sweep file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(grid, dict):
        raise EmoclipError(f"sweep file {path} must hold a mapping (out, configs, methods, seeds, shots, folds)")
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise EmoclipError(f"sweep file {path}: unknown key {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(GRID_KEYS))}")
    if not grid.get("methods"):
        raise EmoclipError(f"sweep file {path} lists no methods; add 'methods: [zero-shot, configs/methods/….yaml]'")
    if grid.get("metric", "accuracy") not in METRICS:
        raise EmoclipError(f"sweep metric must be one of {', '.join(METRICS)}")
    return grid


def _method_entry(entry: Any) -> tuple[str, dict[str, Any]]:
    """(label, config) of one methods entry: a config file, a registered name, or a mapping."""
    if isinstance(entry, dict):
        extra = {k: v for k, v in entry.items() if k not in ("name", "config")}
        base = _method_entry(entry["config"])[1] if entry.get("config") else {}
        label = entry.get("name") or (Path(entry["config"]).stem if entry.get("config") else None)
        if not label:
            raise EmoclipError(f"a methods entry needs 'name' or 'config'; got {entry!r}")
        merged = merge(base, extra)
        merged.setdefault("method", label)
        return str(label), merged
    text = str(entry)
    if Path(text).suffix.lower() in (".yaml", ".yml", ".toml"):
        return Path(text).stem, read_configs([text])
    return text, {"method": text}


def plan(grid: dict[str, Any]) -> list[Run]:
    """Every run of the grid, in a fixed order (methods, shots, folds, seeds)."""
    out = Path(grid.get("out") or "runs/sweep")
    base = read_configs(list(grid.get("configs") or []))
    overrides = grid.get("set") or {}
    seeds = list(grid.get("seeds") or [0])
    shots_axis = list(grid.get("shots") or [0])
    folds_axis = list(grid.get("folds") or [None])
    runs = []
    for entry in grid["methods"]:
        label, method_cfg = _method_entry(entry)
        zero_shot = method_cfg.get("method") == ZERO_SHOT
        for shots in [0] if zero_shot else shots_axis:
            for fold in folds_axis:
                for seed in seeds[:1] if zero_shot else seeds:
                    folder = out / label
                    if grid.get("shots"):
                        folder = folder / f"shots-{shots}"
                    if fold is not None:
                        folder = folder / f"fold-{fold}"
                    folder = folder / f"seed-{seed}"
                    config = merge(merge(base, method_cfg), overrides)
                    config = merge(config, {"name": label, "data": {"fold": fold},
                                            "train": {"seed": seed, "shots": shots or None}})
                    if zero_shot:
                        config.pop("train", None)
                        config["train"] = {"seed": seed}
                    runs.append(Run(label, folder, config))
    return runs


def run_sweep(path: str | Path, device: str = "auto", cache_dir: str | None = None, no_cache: bool = False,
              progress: bool | None = None, dry_run: bool = False, echo=print) -> dict:
    """Run what is missing of the grid in ``path``, then aggregate; returns the table."""
    from emoclip.training.experiment import run_experiment

    grid = read_grid(path)
    runs = plan(grid)
    todo = [r for r in runs if not r.finished]
    echo(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run")
    stale = [r for r in runs if r.stale]
    if stale:
        echo(f"sweep: warning: {len(stale)} finished runs were made with another config than the grid now gives "
             f"(first: {stale[0].folder}); they are kept — delete their folders to rerun them")
    for n, run in enumerate(todo, 1):
        echo(f"[{n}/{len(todo)}] {run.folder}")
        if dry_run:
            continue
        run.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.folder / PLANNED, json.dumps(_plain(run.config), indent=2) + "\n")
        run_experiment(run.config, run.folder, device, cache_dir, no_cache, resume=True, progress=progress)
    out = Path(grid.get("out") or "runs/sweep")
    done = [r.folder for r in runs if (r.folder / "metrics.json").is_file()]
    if not done:
        return {}
    metric = grid.get("metric", "accuracy")
    table = aggregate(load_runs(done), metric)
    text = markdown_table(table, metric)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "table.json", json.dumps(table, indent=2) + "\n")
    echo(text.rstrip("\n"))
    return table
