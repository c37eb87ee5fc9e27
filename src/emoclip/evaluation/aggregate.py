"""Mean ± std over seeds and folds, laid out like the papers' tables (methods as rows, datasets as columns).

The rules, so a table never averages what it should not:

- runs that differ **only** in seed and fold form one cell: mean ± sample std (ddof=1) and n, the
  seeds and the folds it averages over (five folds of one seed: n = 5);
- runs that differ in anything else never merge: another backbone, weights or precision (bf16,
  fast decoding) is another row, labelled with it; another few-shot K or training target is another
  row; another data source under the same dataset name is another column, labelled with its source;
- the table's first line says what each cell averages over.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emoclip.core.errors import EmoclipError

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_FOLD_SUFFIX = re.compile(r"-fold\d+$")


def load_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    """metrics.json of each run folder; a folder that is not a run is searched for runs below it."""
    runs = []
    for d in run_dirs:
        path = Path(d)
        if path.is_file():
            files = [path]
        elif (path / "metrics.json").is_file():
            files = [path / "metrics.json"]
        else:
            files = sorted(path.rglob("metrics.json")) if path.is_dir() else []
        if not files:
            raise EmoclipError(f"{d} holds no metrics.json; give run folders written by `emoclip evaluate`/`train` "
                               "(or a folder that contains them)")
        for file in files:
            try:
                runs.append(json.loads(file.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise EmoclipError(f"cannot read {file}: {exc}; rerun that run or leave it out") from None
    return runs


def _backbone_key(run: dict) -> tuple:
    """The encoder spec a run's features came from (model, weights, precision, decode mode)."""
    backbone = run.get("backbone") or {}
    # the encoder spec recorded by evaluate/train; runs from before it had neither field (fp32, full decode)
    precision = backbone.get("precision") or "fp32"
    decode = "draft-decode" if backbone.get("decode") == "draft" else ""
    return (backbone.get("model", "?"), str(backbone.get("weights", "?")), precision, decode)


def _backbone_label(key: tuple) -> str:
    model, weights, precision, decode = key
    weights = weights if len(weights) <= 24 else weights[:21] + "…"
    extras = [x for x in (precision if precision != "fp32" else "", decode) if x]
    return f"{model}/{weights}" + (f", {', '.join(extras)}" if extras else "")


def _row_key(run: dict) -> tuple:
    """Everything but seed and fold that identifies what was run."""
    name = run.get("name") or run.get("method", {}).get("method", "run")
    return (name, int(run.get("shots") or 0), run.get("target") or "labels", _backbone_key(run))


def _dataset_name(run: dict) -> str:
    name = run.get("dataset_label") or run.get("dataset", "data")
    return _FOLD_SUFFIX.sub("", str(name).split(":")[0])


def _columns(metrics: dict) -> dict[str, dict]:
    """The figures of one run by level: its evaluation level and every coarser level scored."""
    return {metrics["level"]: metrics, **metrics.get("coarse", {})}


def aggregate(runs: Sequence[dict], metric: str = "accuracy") -> dict:
    """{row label: {column label: {mean, std, n, values, seeds, folds}}}; std is the sample std (ddof=1)."""
    if metric not in METRICS:
        raise EmoclipError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    cells: dict[tuple, dict[tuple, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    sources: dict[str, set] = defaultdict(set)
    for metrics in runs:
        run = metrics.get("run", {})
        dataset = _dataset_name(run)
        source = _FOLD_SUFFIX.sub("", str(run.get("data_source") or ""))
        sources[dataset].add(source)
        for level, figures in _columns(metrics).items():
            cells[_row_key(run)][(dataset, source, run.get("split") or "", level)].append(
                (100.0 * figures[metric], run.get("seed"), run.get("fold")))
    several_backbones = len({key[3] for key in cells}) > 1
    table: dict = {}
    for row_key in sorted(cells, key=lambda k: (k[0], k[1], k[2], k[3])):
        label = _row_label(row_key, several_backbones)
        table[label] = {}
        for (dataset, source, split, level), entries in sorted(cells[row_key].items()):
            shown = dataset if split in ("", "test") else f"{dataset}:{split}"
            column = f"{shown} [{level}]"
            if len(sources[dataset]) > 1:
                column = f"{shown} ({source or 'unknown source'}) [{level}]"
            values = np.array([v for v, _, _ in entries])
            table[label][column] = {
                "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "n": len(values), "values": values.tolist(),
                "seeds": sorted({s for _, s, _ in entries if s is not None}),
                "folds": sorted({f for _, _, f in entries if f is not None}),
            }
    return table


def _row_label(key: tuple, with_backbone: bool) -> str:
    name, shots, target, backbone = key
    qualifiers = [f"{shots}-shot"] if shots else []
    if target != "labels":
        qualifiers.append(f"target {target}")
    if with_backbone:
        qualifiers.append(_backbone_label(backbone))
    return name + (f" ({'; '.join(qualifiers)})" if qualifiers else "")


def _over(cell: dict) -> str:
    seeds, folds = cell.get("seeds", []), cell.get("folds", [])
    parts = []
    if seeds:
        parts.append(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
    if folds:
        parts.append(f"{len(folds)} fold{'s' if len(folds) != 1 else ''}")
    return " × ".join(parts)


def markdown_table(table: dict, metric: str) -> str:
    columns = sorted({c for row in table.values() for c in row})
    spans = sorted({_over(cell) for row in table.values() for cell in row.values() if _over(cell)})
    over = "; ".join(spans) if spans else "runs"
    lines = [f"{metric} (%), mean ± std over the runs of each cell (seeds and folds; n = runs): {over}. "
             "Rows differ in method, few-shot K, target or backbone; runs of different backbones, weights, "
             "precision or data are never averaged together.", "",
             "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, cells in table.items():
        shown = [f"{cells[c]['mean']:.2f} ± {cells[c]['std']:.2f} (n={cells[c]['n']})" if c in cells else "–"
                 for c in columns]
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"
