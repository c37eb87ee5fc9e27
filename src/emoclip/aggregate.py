"""Mean ± std over seeds, laid out like the papers' tables (methods as rows, datasets as columns)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import EmoclipError

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def load_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    runs = []
    for d in run_dirs:
        path = Path(d) / "metrics.json" if Path(d).is_dir() else Path(d)
        if not path.is_file():
            raise EmoclipError(f"{d} holds no metrics.json; give run folders written by `emoclip evaluate`/`train`")
        runs.append(json.loads(path.read_text()))
    return runs


def _columns(run: dict) -> dict[str, float]:
    """The figures of one run, by column name: '<dataset>' and '<dataset> (<coarse level>)'."""
    dataset = run["run"].get("dataset_label") or run["run"].get("dataset", "data")
    cols = {f"{dataset} [{run['level']}]": run}
    for level, m in run.get("coarse", {}).items():
        cols[f"{dataset} [{level}]"] = m
    return cols


def aggregate(runs: Sequence[dict], metric: str = "accuracy") -> dict:
    """{row: {column: {mean, std, n, values}}} with std the sample standard deviation (ddof=1)."""
    if metric not in METRICS:
        raise EmoclipError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        row = run["run"].get("name") or run["run"].get("method", {}).get("method", "run")
        for column, figures in _columns(run).items():
            values[row][column].append(100.0 * figures[metric])
    table: dict = {}
    for row, cols in values.items():
        table[row] = {}
        for column, vals in cols.items():
            arr = np.array(vals)
            table[row][column] = {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
                                  "n": len(arr), "values": vals}
    return table


def markdown_table(table: dict, metric: str) -> str:
    columns = sorted({c for row in table.values() for c in row})
    lines = [f"{metric} (%), mean ± std over seeds (n = runs)", "",
             "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, cells in table.items():
        shown = [f"{cells[c]['mean']:.2f} ± {cells[c]['std']:.2f} (n={cells[c]['n']})" if c in cells else "–"
                 for c in columns]
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"
