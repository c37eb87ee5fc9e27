"""Mean ± std over seeds and folds, laid out like the papers' tables (methods as rows, datasets as columns).

The run record is the identity of a result. Every run written by ``train``/``sweep`` records its
``setting`` (``run_setting``): the method and every one of its options as configured, the training
recipe (the learning-rate grid included; everything but the seed), the data (source, layout, label
and vote tables, split), few-shot K, target, the digest of extra inputs (CLIP-E's caption table)
and the encoder spec. The rules, so a table never averages what it should not:

- runs whose settings are equal — they differ **only** in seed and fold — form one cell: mean ±
  sample std (ddof=1), n, and the seeds and folds it averages over (five folds of one seed: n = 5);
- runs that differ in anything else never merge: another option, recipe, K, target or encoder is
  another row, labelled with what differs; other data under the same dataset name is another
  column, labelled with its source;
- two runs of the same setting, seed and fold are one result twice: refused, naming both files
  (records without a seed cannot be told apart from one run twice and are counted as given);
- the caption says what each cell averages over; a cell of one run shows its value without "± 0.00";
- one name per method (``zeroshot`` of older records is ``zero-shot``).

Records written before ``setting`` existed (and ``evaluate`` runs) are identified by their name,
few-shot K, target, encoder and data source, as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emoclip.core.errors import EmoclipError
from emoclip.core.strict_json import finite

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_FOLD_SUFFIX = re.compile(r"-fold\d+$")
# One name per method: older records (and `evaluate`'s zero-shot classifier) said "zeroshot".
METHOD_NAMES = {"zeroshot": "zero-shot", "zero_shot": "zero-shot"}
# Training options that are not part of a setting: the seed varies within a cell by design.
_NOT_SETTING = ("seed",)
# Data options that are not part of a setting: the fold varies within a cell by design.
_DATA_PATHS = ("root", "split_file", "label_file", "votes")


def method_name(name: Any) -> str:
    return METHOD_NAMES.get(str(name), str(name))


def run_setting(method: dict, train: dict | None, data_config: dict | None, source: str, shots: int, target: str,
                taxonomy: str, label_taxonomy: str, encoder: dict, inputs: dict | None = None,
                eval_split: str | None = "test") -> dict:
    """Everything that can change a run's result but its seed and fold: what ``aggregate`` groups on.

    ``method`` is the method's options as configured (before fitting: the linear probe's chosen
    strength is a result, not a setting); ``train`` the full training recipe; ``data_config`` the
    data section (paths made absolute, the fold left out); ``inputs`` what the method read beyond
    the images (``{"image_captions": {"sha256": …}}``), recorded by its digest rather than its path.
    """
    method = {**method, "method": method_name(method.get("method"))}
    digests = {k: v.get("sha256") for k, v in (inputs or {}).items() if isinstance(v, dict)}
    if digests.get("image_captions") and method.get("image_captions"):
        method["image_captions"] = f"sha256:{digests['image_captions']}"
    recipe = None
    if train is not None:
        recipe = {k: v for k, v in train.items() if k not in _NOT_SETTING}
        recipe["lr_grid"] = list(recipe.get("lr_grid") or []) or None  # [] (turned off by --lr) = none
    data = {k: v for k, v in (data_config or {}).items() if k != "fold" and v not in (None, [], "")}
    for key in _DATA_PATHS:
        if data.get(key):
            data[key] = str(Path(str(data[key])).expanduser().resolve())
    if data.get("manifests"):
        data["manifests"] = [str(Path(str(m)).expanduser().resolve()) for m in data["manifests"]]
    data = {**data, "source": _FOLD_SUFFIX.sub("", str(source or "")), "eval_split": eval_split}
    return json.loads(json.dumps(finite({
        "method": method, "train": recipe, "data": data, "shots": int(shots or 0), "target": target or "labels",
        "taxonomy": taxonomy, "label_taxonomy": label_taxonomy, "encoder": encoder, "inputs": digests or None}),
        default=str))


def load_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    """metrics.json of each run folder; a folder that is not a run is searched for runs below it.

    Each record carries the file it came from under ``"_file"`` (for the duplicate check's message).
    """
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
                record = json.loads(file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise EmoclipError(f"cannot read {file}: {exc}; rerun that run or leave it out") from None
            if not isinstance(record, dict) or not isinstance(record.get("run", {}), dict) or "level" not in record:
                raise EmoclipError(f"{file} is not the metrics.json of a run (no 'run' and 'level'); leave it out")
            runs.append({**record, "_file": str(file)})
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


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _name(run: dict) -> str:
    return method_name(run.get("name") or (run.get("method") or {}).get("method", "run"))


def _row_setting(run: dict) -> dict:
    """The part of the run's identity that makes its row: everything but the data (a column)."""
    setting = run.get("setting")
    if isinstance(setting, dict):
        return {k: v for k, v in setting.items() if k != "data"}
    # a record from before settings: what it has (evaluate runs, older train runs)
    return {"shots": int(run.get("shots") or 0), "target": run.get("target") or "labels"}


def _data_setting(run: dict) -> dict:
    setting = run.get("setting")
    if isinstance(setting, dict) and isinstance(setting.get("data"), dict):
        return setting["data"]
    return {"source": _FOLD_SUFFIX.sub("", str(run.get("data_source") or ""))}


def _row_key(run: dict) -> tuple:
    """Everything but seed, fold and data that identifies what was run."""
    return (_name(run), _canonical(_row_setting(run)), _backbone_key(run))


def _dataset_name(run: dict) -> str:
    name = run.get("dataset_label") or run.get("dataset", "data")
    return _FOLD_SUFFIX.sub("", str(name).split(":")[0])


def _columns(metrics: dict) -> dict[str, dict]:
    """The figures of one run by level: its evaluation level and every coarser level scored."""
    return {metrics["level"]: metrics, **metrics.get("coarse", {})}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "/".join(_shown(v) for v in value) or "none"
    text = "none" if value in (None, "") else f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 24 else text[:21] + "…"


_QUALIFIED = ("shots", "target")  # shown their own way ("4-shot", "target votes")


def _row_labels(keys: list[tuple], settings: dict[tuple, dict]) -> dict[tuple, str]:
    """A label per row: the method name, then what sets it apart from the other rows of that name."""
    several_backbones = len({key[2] for key in keys}) > 1
    labels = {}
    by_name: dict[str, list[tuple]] = defaultdict(list)
    for key in keys:
        by_name[key[0]].append(key)
    for name, group in by_name.items():
        flats = {key: _flat(settings[key]) for key in group}
        fields = sorted({f for flat in flats.values() for f in flat})
        # what differs among the rows of this name; the encoder has its own label, inputs show in their option
        varying = [f for f in fields if len({_canonical(flats[k].get(f)) for k in group}) > 1
                   and f not in _QUALIFIED and not f.startswith(("encoder.", "inputs"))]
        for key in group:
            setting = settings[key]
            qualifiers = [f"{setting.get('shots')}-shot"] if setting.get("shots") else []
            if (setting.get("target") or "labels") != "labels":
                qualifiers.append(f"target {setting['target']}")
            qualifiers += [f"{f.removeprefix('method.').removeprefix('train.')}={_shown(flats[key].get(f))}"
                           for f in varying]
            if several_backbones:
                qualifiers.append(_backbone_label(key[2]))
            labels[key] = name + (f" ({'; '.join(qualifiers)})" if qualifiers else "")
    seen: dict[str, int] = defaultdict(int)
    for key in keys:  # labels stay unique even where what differs cannot be shown
        seen[labels[key]] += 1
        if seen[labels[key]] > 1:
            labels[key] += f" #{seen[labels[key]]}"
    return labels


def aggregate(runs: Sequence[dict], metric: str = "accuracy") -> dict:
    """{row label: {column label: {mean, std, n, values, seeds, folds}}}; std is the sample std (ddof=1).

    ``std`` is None for a cell of one run (there is no spread to show). Two runs of the same setting,
    seed and fold are refused: the second would be the first result counted twice.
    """
    if metric not in METRICS:
        raise EmoclipError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    cells: dict[tuple, dict[tuple, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    sources: dict[str, set] = defaultdict(set)
    settings: dict[tuple, dict] = {}
    seen: dict[tuple, str] = {}
    for n, metrics in enumerate(runs):
        run = metrics.get("run", {})
        dataset = _dataset_name(run)
        data_key = _canonical(_data_setting(run))
        source = _data_setting(run).get("source") or ""
        sources[dataset].add(data_key)
        row = _row_key(run)
        settings[row] = _row_setting(run)
        origin = metrics.get("_file") or f"run #{n + 1}"
        identity = (row, dataset, data_key, run.get("split") or "", metrics.get("level"), run.get("seed"),
                    run.get("fold"))
        if identity in seen and run.get("seed") is not None:  # without a recorded seed, two runs cannot be told
            # apart from one run twice: such (hand-made) records are counted as given
            raise EmoclipError(f"{seen[identity]} and {origin} are the same run (one setting, seed "
                               f"{run.get('seed')}, fold {run.get('fold')}): it would be counted twice; leave one "
                               "out of the runs to aggregate")
        seen[identity] = origin
        for level, figures in _columns(metrics).items():
            value = figures.get(metric)
            if not isinstance(value, int | float) or not np.isfinite(value):
                raise EmoclipError(f"{origin}: {metric} at level {level} is {value!r}, not a number; rerun that run "
                                   "or leave it out")
            cells[row][(dataset, data_key, source, run.get("split") or "", level)].append(
                (100.0 * value, run.get("seed"), run.get("fold")))
    labels = _row_labels(list(cells), settings)
    table: dict = {}
    for row_key in sorted(cells, key=lambda k: labels[k]):
        label = labels[row_key]
        table[label] = {}
        for (dataset, data_key, source, split, level), entries in sorted(cells[row_key].items()):
            shown = dataset if split in ("", "test") else f"{dataset}:{split}"
            column = f"{shown} [{level}]"
            if len(sources[dataset]) > 1:
                tag = source or "unknown source"
                others = {k for k in sources[dataset] if json.loads(k).get("source") == source}
                if len(others) > 1:  # same source, other label table, layout…: a short digest tells them apart
                    tag += f", data {hashlib.sha256(data_key.encode()).hexdigest()[:6]}"
                column = f"{shown} ({tag}) [{level}]"
            values = np.array([v for v, _, _ in entries])
            seeds = sorted({s for _, s, _ in entries if s is not None})
            folds = sorted({f for _, _, f in entries if f is not None})
            table[label][column] = {
                "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "n": len(values), "values": values.tolist(), "seeds": seeds, "folds": folds,
                "complete": len(values) == max(len(seeds), 1) * max(len(folds), 1),
            }
    return table


def _span(values: list) -> str:
    """1, 2, 3, 4, 5 → '1–5'; other lists comma-separated."""
    if len(values) > 2 and all(isinstance(v, int) for v in values) and values == list(range(values[0],
                                                                                          values[-1] + 1)):
        return f"{values[0]}–{values[-1]}"
    return ", ".join(map(str, values))


def _over(cell: dict) -> str:
    seeds, folds = cell.get("seeds", []), cell.get("folds", [])
    parts = []
    if seeds:
        parts.append(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({_span(seeds)})")
    if folds:
        parts.append(f"{len(folds)} fold{'s' if len(folds) != 1 else ''} ({_span(folds)})")
    return " × ".join(parts)


def _cell_text(cell: dict) -> str:
    mark = "" if cell.get("complete", True) else " †"
    if cell["n"] == 1 or cell.get("std") is None:
        return f"{cell['mean']:.2f} (n={cell['n']}){mark}"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f} (n={cell['n']}){mark}"


def markdown_table(table: dict, metric: str) -> str:
    """The table with a caption that says exactly what each cell averages."""
    columns = sorted({c for row in table.values() for c in row})
    spans: dict[str, int] = defaultdict(int)
    for row in table.values():
        for cell in row.values():
            spans[_over(cell) or "one run each"] += 1
    if len(spans) == 1:
        over = f"every cell averages {next(iter(spans))}"
    else:
        over = "; ".join(f"{n} cell{'s' if n != 1 else ''} average {span}" for span, n in sorted(spans.items()))
    incomplete = any(not c.get("complete", True) for row in table.values() for c in row.values())
    lines = [f"{metric} (%): mean ± sample std over the runs of each cell, which differ only in seed and fold "
             f"(n = runs; one run: its value alone); {over}. Runs that differ in any method option, training "
             "recipe (lr grid included), few-shot K, target, extra inputs (caption table), encoder or data are "
             "never averaged together: rows name what sets them apart."
             + (" †: not every seed × fold combination is there." if incomplete else ""), "",
             "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, cells in table.items():
        shown = [_cell_text(cells[c]) if c in cells else "–" for c in columns]
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"
