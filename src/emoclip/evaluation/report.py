"""Run folders a person can read: metrics.json, predictions.csv, plots and a Markdown report.

The report lists the headline figures, per-class precision/recall/F1, the confusion matrix, and the
most confident mistakes as thumbnails — the first place to look when a model goes wrong.

A run folder is written as a whole (``atomic.atomic_folder``): the new files are assembled beside
it and switched in at once, so a run killed mid-way leaves the previous metrics.json, report.md and
plots together, never new metrics beside an old report. Files in the folder that a run does not
write (a checkpoint beside its evaluation) are kept. Unreadable images are listed, never dropped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from emoclip.core.atomic import atomic_folder, atomic_write, atomic_write_bytes, atomic_write_text
from emoclip.core.errors import ImageDecodeError
from emoclip.core.files import name_text
from emoclip.core.strict_json import dumps
from emoclip.encoder.decode import load_rgb
from emoclip.evaluation.evaluate import Evaluation

THUMBNAIL_PX = 160


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """Counts and row-normalised confusion side by side."""
    plt = _plt()
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = max(4.0, 0.55 * len(names) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, data, label, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} — {label}")
        if len(names) <= 30:
            top = data.max() if data.size else 0
            for (r, c), v in np.ndenumerate(data):
                ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=8,
                        color="white" if top and v > top * 0.6 else "black")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_per_class(per_class: dict, path: Path, title: str) -> None:
    plt = _plt()
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4))
    for k, metric in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [per_class[n][metric] for n in names], width=0.27, label=metric)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _thumbnail(source: str, target: Path) -> bool:
    try:
        img = load_rgb(source)
    except ImageDecodeError:
        return False
    img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    atomic_write_bytes(target, buffer.getvalue())
    return True


def write_predictions(evaluation: Evaluation, path: Path) -> None:
    names = evaluation.level.names
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "true", "predicted", "probability", *[f"p_{n}" for n in names], "error"])
        for i, p in enumerate(evaluation.paths):
            probs = evaluation.probs[i]
            writer.writerow([name_text(p), names[evaluation.true[i]], names[evaluation.pred[i]], f"{probs.max():.6f}",
                             *[f"{v:.6f}" for v in probs], ""])
        for p, reason in evaluation.failed.items():
            writer.writerow([name_text(p), "", "", "", *[""] * len(names), reason])


def _fmt(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown_report(evaluation: Evaluation, run: dict, mistakes: list[tuple[str, int, str]]) -> str:
    m = evaluation.metrics
    names = evaluation.level.names
    unreadable = f", {m['n_failed']} unreadable" if m["n_failed"] else ""
    lines = [f"# Evaluation: {run.get('name', 'run')}", "",
             f"- data: {run.get('dataset')} (split `{run.get('split')}`, {m['n']} images{unreadable})",
             f"- model: {run.get('backbone', {}).get('model')} / {run.get('backbone', {}).get('weights')} "
             f"({run.get('backbone', {}).get('precision', 'fp32')}, {run.get('backbone', {}).get('decode', 'full')} "
             "decoding); "
             f"method: {run.get('method', {}).get('method')}",
             f"- level: {m['level']} (model taxonomy {m['model_taxonomy']}, labels {m['label_taxonomy']})",
             f"- features: {m['cache']['hits']} from cache, {m['cache']['misses']} encoded", "",
             "| metric | value (%) |", "|---|---|",
             f"| accuracy | {_fmt(m['accuracy'])} |", f"| balanced accuracy | {_fmt(m['balanced_accuracy'])} |",
             f"| macro-F1 | {_fmt(m['macro_f1'])} |"]
    for level, cm in m["coarse"].items():
        lines.append(f"| {level} accuracy | {_fmt(cm['accuracy'])} |")
    if m["distribution"]:
        d = m["distribution"]
        lines += ["", f"Label distribution ({d['n']} images with votes; {d['note']}):", "",
                  "| KL ↓ | Chebyshev ↓ | cosine ↑ | intersection ↑ |", "|---|---|---|---|",
                  f"| {d['kl_divergence']:.4f} | {d['chebyshev']:.4f} | {d['cosine']:.4f} | {d['intersection']:.4f} |"]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, pc in m["per_class"].items():
        lines.append(f"| {name} | {_fmt(pc['precision'])} | {_fmt(pc['recall'])} | {_fmt(pc['f1'])} | "
                     f"{pc['support']} |")
    lines += ["", "![per-class](per_class.png)", "", "## Confusion (rows: true, columns: predicted)", "",
              "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, m["confusion_matrix"], strict=True):
        lines.append(f"| **{name}** | " + " | ".join(map(str, row)) + " |")
    lines += ["", "![confusion](confusion.png)", ""]
    if mistakes:
        lines += ["## Most confident mistakes", "", "| image | true | predicted |", "|---|---|---|"]
        lines += [f"| ![]({thumb}) | {names[evaluation.true[i]]} | {names[evaluation.pred[i]]} "
                  f"({evaluation.probs[i].max():.2f}) |" for thumb, i, _ in mistakes]
    if evaluation.failed:
        lines += ["", "## Unreadable files", ""] + [f"- `{name_text(p)}`: {r}" for p, r in evaluation.failed.items()]
    return "\n".join(lines) + "\n"


def write_run(evaluation: Evaluation, run: dict, out: Path, n_mistakes: int = 12) -> None:
    """Write metrics.json, predictions.csv, confusion.png, per_class.png, report.md and thumbnails,
    all switched in together."""
    with atomic_folder(out) as staging:
        _write_run_files(evaluation, run, staging, n_mistakes)


def _write_run_files(evaluation: Evaluation, run: dict, out: Path, n_mistakes: int) -> None:
    payload = {"run": run, **evaluation.metrics,
               "failed": {name_text(p): reason for p, reason in evaluation.failed.items()}}
    atomic_write_text(out / "metrics.json", dumps(payload, indent=2) + "\n")  # NaN → null: JSON stays JSON
    write_predictions(evaluation, out / "predictions.csv")
    title = f"{run.get('name', '')} {evaluation.level.name}".strip()
    plot_confusion(np.array(evaluation.metrics["confusion_matrix"]), evaluation.level.names, out / "confusion.png",
                   title)
    plot_per_class(evaluation.metrics["per_class"], out / "per_class.png", title)
    wrong = np.flatnonzero(evaluation.true != evaluation.pred)
    order = wrong[np.argsort(-evaluation.probs[wrong].max(1), kind="stable")]
    mistakes: list[tuple[str, int, str]] = []
    (out / "mistakes").mkdir(exist_ok=True)
    for i in order:
        if len(mistakes) >= n_mistakes:
            break
        thumb = f"mistakes/{len(mistakes) + 1:02d}.jpg"
        if _thumbnail(evaluation.paths[i], out / thumb):
            mistakes.append((thumb, int(i), evaluation.paths[i]))
    atomic_write_text(out / "report.md", markdown_report(evaluation, run, mistakes))
