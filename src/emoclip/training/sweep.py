"""A paper's table in one command: every run of a grid (methods × seeds × shots × folds), then the table.

The grid is a YAML (or TOML) file::

    out: runs/emotion6                       # every run goes below this folder
    configs: [../datasets/emotionroi6.yaml]  # merged first, in order (the data, the taxonomy)
    methods:                                 # each a method or recipe name, a config file, or a mapping
      - zero-shot
      - ptdpc-paper                          # a recipe (`emoclip train --recipe` lists them)
      - ../methods/ptdpc-release.yaml
      - {name: coop-csc, config: ../methods/coop.yaml, options: {class_specific: true}}
    seeds: [1, 2, 3]
    shots: [0, 4, 16]                        # 0: all the training data
    folds: [1, 2, 3, 4, 5]                   # leave out for data with one fixed split
    set: {backbone: {model: ViT-B-32, pretrained: openai}}   # merged last, into every run
    metric: accuracy

Every path of the grid (``out``, ``configs``, method files, ``set: {data: …}``) is relative to the
grid file's folder, so a grid runs the same from any working folder; ``emoclip sweep --root DIR``
points every run at your copy of the data and ``--set SECTION.KEY=VALUE`` overrides any setting.
Every key is type-checked and every run's config checked against the schema before the first run.
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
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emoclip.core.atomic import atomic_write_text
from emoclip.core.errors import EmoclipError, short_repr
from emoclip.core.options import load_yaml
from emoclip.core.userfiles import read_text
from emoclip.evaluation.aggregate import METRICS, aggregate, load_runs, markdown_table
from emoclip.schema.data import PATH_OPTIONS
from emoclip.schema.experiment import SECTIONS, check_experiment, merge, parse_sets, read_configs
from emoclip.schema.methods import METHOD_CARDS, canonical_name, method_card

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


def _type_error(path: Any, key: str, needs: str, value: Any) -> EmoclipError:
    return EmoclipError(f"sweep file {path}: '{key}' must be {needs}, got {short_repr(value)}; fix it in the grid")


def _check_list(grid: dict, path: Any, key: str, ok, needs: str) -> None:
    value = grid.get(key)
    if value is None:
        return
    if not isinstance(value, list) or not all(ok(v) for v in value):
        raise _type_error(path, key, needs, value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_grid(path: str | Path) -> dict[str, Any]:
    """The grid file, every key type-checked (a list where a list belongs: ``seeds: 5`` or
    ``methods: coop`` is refused, not iterated letter by letter), its paths resolved relative to the
    grid file (``_base`` records the folder)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise EmoclipError(f"sweep file {path} does not exist")
    text = read_text(file, "sweep file")
    try:
        grid = tomllib.loads(text) if file.suffix.lower() == ".toml" else load_yaml(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise EmoclipError(f"cannot parse sweep file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(grid, dict):
        raise EmoclipError(f"sweep file {path} must hold a mapping (out, configs, methods, seeds, shots, folds)")
    unknown = sorted(map(str, set(grid) - GRID_KEYS))
    if unknown:
        raise EmoclipError(f"sweep file {path}: unknown key {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(GRID_KEYS))}")
    if not grid.get("methods"):
        raise EmoclipError(f"sweep file {path} lists no methods; add 'methods: [zero-shot, configs/methods/….yaml]'")
    if grid.get("out") is not None and not isinstance(grid["out"], str):
        raise _type_error(path, "out", "a folder name", grid["out"])
    _check_list(grid, path, "methods", lambda v: isinstance(v, str | dict), "a list of method names, recipe names, "
                "config files or mappings")
    _check_list(grid, path, "configs", lambda v: isinstance(v, str), "a list of config files")
    _check_list(grid, path, "seeds", _whole, "a list of whole numbers, e.g. [1, 2, 3]")
    _check_list(grid, path, "shots", lambda v: _whole(v) and v >= 0, "a list of whole numbers 0 or more (0: all)")
    _check_list(grid, path, "folds", lambda v: v is None or _whole(v), "a list of fold numbers, e.g. [1, 2, 3]")
    if grid.get("set") is not None and not isinstance(grid["set"], dict):
        raise _type_error(path, "set", "a mapping of sections, e.g. {train: {epochs: 2}}", grid["set"])
    if grid.get("metric", "accuracy") not in METRICS:
        raise EmoclipError(f"sweep metric must be one of {', '.join(METRICS)}")
    return {**grid, "_base": str(file.resolve().parent)}


def _base(grid: dict[str, Any]) -> Path:
    return Path(grid.get("_base") or ".")


def _shipped(base: Path) -> bool:
    """True for a grid shipped inside the package (its ``out`` is relative to the working folder)."""
    from emoclip.recipes import RECIPES_DIR

    return base.resolve().is_relative_to(RECIPES_DIR)


def _out_folder(grid: dict[str, Any]) -> Path:
    """The grid's ``out``: relative to the grid file, except for a grid shipped inside the package
    (emoclip/recipes/sweeps), whose runs go below the working folder, never into site-packages."""
    base = _base(grid)
    return Path(_resolve(Path(".") if _shipped(base) else base, grid.get("out") or "runs/sweep"))


def _resolve(base: Path, name: str) -> str:
    """A grid's path: relative to the grid file's folder (absolute and ~ paths as given)."""
    path = Path(name).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def _resolve_data(base: Path, section: Any) -> Any:
    """A data section's paths resolved: relative to the grid file, or for a grid shipped inside the
    package to the working folder (the data is the user's)."""
    if not isinstance(section, dict):
        return section
    if _shipped(base):
        base = Path(".")
    data = dict(section)
    for key in PATH_OPTIONS:
        value = data.get(key)
        if isinstance(value, str):
            data[key] = _resolve(base, value)
        elif isinstance(value, list):
            data[key] = [_resolve(base, v) if isinstance(v, str) else v for v in value]
    return data


def _safe_label(label: Any) -> str:
    """A run's folder name below ``out``: one plain name, never a path that climbs out of it."""
    text = str(label)
    if (not text or text in (".", "..") or any(c in text for c in "/\\\0") or Path(text).is_absolute()
            or text.startswith("~")):
        raise EmoclipError(f"sweep method name {short_repr(label)} must be one plain folder name (no '/', '..' or "
                           "absolute path): runs stay inside the grid's out folder; set 'name:' on the entry")
    return text


def _method_entry(entry: Any, base: Path) -> tuple[str, dict[str, Any]]:
    """(label, config) of one methods entry: a config file, a method name, a recipe name, or a mapping."""
    if isinstance(entry, dict):
        unknown = sorted(map(str, set(entry) - {"name", "config", *SECTIONS}))
        if unknown:
            raise EmoclipError(f"sweep methods entry {short_repr(entry)}: unknown key {', '.join(unknown)}; use name, "
                               f"config and experiment sections ({', '.join(sorted(SECTIONS))})")
        extra = {k: v for k, v in entry.items() if k not in ("name", "config")}
        if "data" in extra:
            extra["data"] = _resolve_data(base, extra["data"])
        config_file = entry.get("config")
        if config_file is not None and not isinstance(config_file, str):
            raise EmoclipError(f"sweep methods entry: 'config' must be a config file, got {short_repr(config_file)}")
        base_config = _method_entry(config_file, base)[1] if config_file else {}
        label = entry.get("name") or (Path(config_file).stem if config_file else None)
        if not label:
            raise EmoclipError(f"a methods entry needs 'name' or 'config'; got {short_repr(entry)}")
        merged = merge(base_config, extra)
        merged.setdefault("method", label)
        return _safe_label(label), merged
    text = str(entry)
    if Path(text).suffix.lower() in (".yaml", ".yml", ".toml"):
        return _safe_label(Path(text).stem), read_configs([_resolve(base, text)])
    if text not in METHOD_CARDS and canonical_name(text) not in METHOD_CARDS:
        from emoclip.recipes import list_recipes

        if text in list_recipes():
            return _safe_label(text), read_configs([list_recipes()[text]])
    return _safe_label(text), {"method": canonical_name(text)}


def plan(grid: dict[str, Any], root: str | None = None, sets: list[str] | tuple[str, ...] = ()) -> list[Run]:
    """Every run of the grid, in a fixed order (methods, shots, folds, seeds), each config checked
    against the schema (a bad option fails here, before any run). ``root`` and ``sets`` (``--root``,
    ``--set SECTION.KEY=VALUE``) override every run's data root and settings."""
    base = _base(grid)
    out = _out_folder(grid)
    configs = read_configs([_resolve(base, c) for c in grid.get("configs") or []])
    overrides = dict(grid.get("set") or {})
    if "data" in overrides:
        overrides["data"] = _resolve_data(base, overrides["data"])
    overrides = merge(overrides, parse_sets(list(sets), bare_section=None))
    if root is not None:
        overrides = merge(overrides, {"data": {"root": str(Path(root).expanduser().resolve())}})
    seeds = list(grid.get("seeds") or [0])
    shots_axis = list(grid.get("shots") or [0])
    folds_axis = list(grid.get("folds") or [None])
    runs = []
    for entry in grid["methods"]:
        label, method_cfg = _method_entry(entry, base)
        trainable = method_card(method_cfg.get("method") or label).trainable  # zero-shot: nothing is trained
        for shots in shots_axis if trainable else [0]:
            for fold in folds_axis:
                for seed in seeds if trainable else seeds[:1]:
                    folder = out / label
                    if grid.get("shots"):
                        folder = folder / f"shots-{shots}"
                    if fold is not None:
                        folder = folder / f"fold-{fold}"
                    folder = folder / f"seed-{seed}"
                    config = merge(merge(configs, method_cfg), overrides)
                    config = merge(config, {"name": label, "data": {"fold": fold},
                                            "train": {"seed": seed, "shots": shots or None}})
                    if not trainable:
                        config.pop("train", None)
                        config["train"] = {"seed": seed}
                    runs.append(Run(label, folder, check_experiment(config, f"sweep run {label}")))
    return runs


def run_sweep(path: str | Path, device: str = "auto", cache_dir: str | None = None, no_cache: bool = False,
              progress: bool | None = None, dry_run: bool = False, echo=print, root: str | None = None,
              sets: list[str] | tuple[str, ...] = (), out: str | None = None) -> dict:
    """Run what is missing of the grid in ``path`` (``root``/``sets``: see ``plan``; ``out``: another
    folder than the grid's, relative to the working folder), then aggregate; returns the table."""
    grid = read_grid(path)
    if out is not None:
        grid["out"] = str(Path(out).expanduser().resolve())
    runs = plan(grid, root, sets)
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
        from emoclip.training.experiment import run_experiment

        run_experiment(run.config, run.folder, device, cache_dir, no_cache, resume=True, progress=progress)
    table_folder = _out_folder(grid)
    done = [r.folder for r in runs if (r.folder / "metrics.json").is_file()]
    if not done:
        return {}
    metric = grid.get("metric", "accuracy")
    table = aggregate(load_runs(done), metric)
    text = markdown_table(table, metric)
    atomic_write_text(table_folder / "table.md", text)
    atomic_write_text(table_folder / "table.json", json.dumps(table, indent=2) + "\n")
    echo(text.rstrip("\n"))
    return table
