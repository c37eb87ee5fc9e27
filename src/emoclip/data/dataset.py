"""Labelled image datasets with fixed splits, from the layouts the affective benchmarks ship in.

Every source yields the same thing, a ``Dataset`` of ``Sample``s (path, label, split, optional
vote distribution). Sources are a registry keyed by layout:

- ``folders``: ``root/<class>/<image>`` (no split: use ``emoclip split`` to make one);
- ``split-file``: a CSV/TSV of ``image, label, split`` with paths relative to ``--root``;
- ``split-folders``: ``root/{train,val,test}/<class>/<image>`` (the FI release layout);
- ``kfold``: ``root/<fold…>/<class>/<image>`` or ``root/<fold…>.txt`` list files (the Twitter
  benchmarks' 5 folds); ``--fold K`` is the test fold, the others are train;
- ``manifest``: JSON manifests (EmoSet style), one per split or one with a ``split`` field.

Labels are checked against the taxonomy up front, with an error naming the label and the file.
Listed image paths must stay inside ``--root``: an absolute path or one that climbs out with ``..``
is refused (a shared split file must not make emoclip read arbitrary files). Split files are read
as UTF-8 tables of bounded size; names use ``files.name_text``'s escapes, so any file name a split
file lists round-trips exactly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import EmoclipError, TaxonomyError, short_repr
from ..taxonomy import Taxonomy
from ..userfiles import MAX_TABLE_BYTES, read_text
from .files import name_from_text, name_text, walk_images

SPLIT_FOLDER_NAMES = ("train", "val", "validation", "test")
_FOLD_PATTERN = re.compile(r"(fold|split|part)[_-]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    split: str | None = None


@dataclass
class Dataset:
    """Samples with labels and splits; ``votes`` (N × C over ``vote_classes``) where the data has them."""

    name: str
    samples: list[Sample]
    source: str = ""
    votes: np.ndarray | None = None
    vote_classes: tuple[str, ...] = ()
    vote_note: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    @property
    def splits(self) -> list[str]:
        return sorted({s.split for s in self.samples if s.split is not None})

    def split(self, name: str | None) -> Dataset:
        """The samples of one split (``None`` or ``all``: every sample)."""
        if name in (None, "all"):
            return self
        keep = [i for i, s in enumerate(self.samples) if s.split == name]
        if not keep:
            raise EmoclipError(f"dataset {self.name} has no '{name}' split; its splits are: "
                               f"{', '.join(self.splits) or 'none (give a split file)'}")
        return self.subset(keep, f"{self.name}:{name}")

    def subset(self, indices: Sequence[int], name: str | None = None) -> Dataset:
        votes = None if self.votes is None else self.votes[np.asarray(indices, dtype=int)]
        return replace(self, name=name or self.name, samples=[self.samples[i] for i in indices], votes=votes)

    def label_indices(self, taxonomy: Taxonomy) -> np.ndarray:
        """Class index of every sample under ``taxonomy``; an unknown label is an error naming it."""
        out = np.empty(len(self.samples), dtype=np.int64)
        for i, s in enumerate(self.samples):
            try:
                out[i] = taxonomy.index(s.label)
            except TaxonomyError:
                raise TaxonomyError(
                    f"label '{s.label}' of {s.path} (from {self.source}) is not in taxonomy '{taxonomy.name}' "
                    f"({', '.join(taxonomy.names)}); pass the right --taxonomy/--label-taxonomy") from None
        return out


# -- sources -------------------------------------------------------------------------------------
def _images_in(folder: Path) -> list[Path]:
    return walk_images(folder)  # what it passes over is counted in a warning


def listed_path(root: Path, listed: str, origin: str) -> Path:
    """``root / listed`` for a path from a split file or manifest, refused if it leaves ``root``."""
    relative = name_from_text(listed.strip())
    if not relative:
        raise EmoclipError(f"{origin}: an image path is empty; list each image relative to --root")
    if os.path.isabs(relative) or relative.startswith("~"):
        raise EmoclipError(f"{origin}: image path '{name_text(relative)}' is absolute; list images relative to "
                           f"--root ({name_text(root)})")
    if ".." in Path(relative).parts:
        raise EmoclipError(f"{origin}: image path '{name_text(relative)}' climbs out of --root with '..'; list "
                           "images inside --root (or point --root higher)")
    return root / relative


def _class_folder_samples(root: Path, split: str | None) -> list[Sample]:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [Sample(p, c.name, split) for c in classes for p in _images_in(c)]


def from_folders(root: Path, **_) -> Dataset:
    samples = _class_folder_samples(root, None)
    if not samples:
        raise EmoclipError(f"no images found under {root}/<class>/; expected one folder per class")
    return Dataset(root.name, samples, source=str(root))


def from_split_folders(root: Path, **_) -> Dataset:
    samples = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name.lower() in SPLIT_FOLDER_NAMES:
            split = "val" if d.name.lower() == "validation" else d.name.lower()
            samples += _class_folder_samples(d, split)
    if not samples:
        raise EmoclipError(f"no images under {root}/{{train,val,test}}/<class>/; check --root and --layout")
    return Dataset(root.name, samples, source=str(root))


def _read_table(path: Path) -> list[list[str]]:
    """Rows of a CSV/TSV (tab-separated when the first line has a tab); never empty."""
    text = read_text(path, "table", MAX_TABLE_BYTES)
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first else ","
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
                if row and any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise EmoclipError(f"cannot read table {path}: {exc}; check its quoting") from None
    if not rows:
        raise EmoclipError(f"{path} is empty; it needs a row per image: image, label[, split]")
    return rows


def _list_file_samples(path: Path, base: Path, split: str | None) -> list[Sample]:
    rows = _read_table(path)
    if rows and rows[0][0].strip().lower() in ("image", "path", "file", "filename"):
        rows = rows[1:]
    samples = []
    for n, row in enumerate(rows, 1):
        fields = row if len(row) > 1 else row[0].split()
        if len(fields) < 2:
            raise EmoclipError(f"{path}:{n}: expected 'image<TAB>label', got {short_repr(row)}; fix that row")
        samples.append(Sample(listed_path(base, fields[0], f"{path}:{n}"), fields[1].strip(), split))
    return samples


def from_split_file(root: Path, split_file: Path | None = None, **_) -> Dataset:
    """``image, label, split`` rows (header optional; tab or comma separated), paths relative to root."""
    if split_file is None:
        raise EmoclipError("the split-file layout needs a split file; give --split-file FILE")
    rows = _read_table(split_file)
    header = [h.strip().lower() for h in rows[0]]
    if {"image", "label"} <= set(header) or {"path", "label"} <= set(header):
        col = {name: header.index(name) for name in header}
        image_col = col.get("image", col.get("path"))
        rows, label_col, split_col = rows[1:], col["label"], col.get("split")
    else:
        image_col, label_col, split_col = 0, 1, 2 if len(rows[0]) > 2 else None
    samples = []
    for n, row in enumerate(rows, 2):
        if len(row) <= max(image_col, label_col):
            raise EmoclipError(f"{split_file}:{n}: expected image, label and split columns, got {short_repr(row)}; "
                               "fix that row")
        split = row[split_col].strip() if split_col is not None and split_col < len(row) else None
        samples.append(Sample(listed_path(root, row[image_col], f"{split_file}:{n}"), row[label_col].strip(), split))
    if not samples:
        raise EmoclipError(f"{split_file} lists no images (only a header); it needs a row per image")
    dataset = Dataset(split_file.parent.name, samples, source=str(split_file))
    votes_file = split_file.parent / "ground_truth.txt"
    return attach_votes(dataset, votes_file, root) if votes_file.is_file() else dataset


def _fold_number(path: Path) -> int | None:
    match = _FOLD_PATTERN.search(path.stem)
    return int(match.group(2)) if match else None


def from_kfold(root: Path, fold: int | None = None, **_) -> Dataset:
    """Folds are sub-folders or list files named like ``fold1``, ``split_2``…; ``fold`` is the test fold."""
    parts = sorted((p for p in root.iterdir() if _fold_number(p) is not None and
                    (p.is_dir() or p.suffix.lower() in (".txt", ".tsv", ".csv"))), key=_fold_number)
    if not parts:
        raise EmoclipError(f"no fold folders or list files (fold1, fold2, …) in {root}; check --root and --layout")
    numbers = [_fold_number(p) for p in parts]
    test_fold = numbers[0] if fold is None else fold
    if test_fold not in numbers:
        raise EmoclipError(f"--fold {fold} does not exist in {root}; folds: {', '.join(map(str, numbers))}")
    samples = []
    for part, number in zip(parts, numbers, strict=True):
        split = "test" if number == test_fold else "train"
        samples += (_class_folder_samples(part, split) if part.is_dir()
                    else _list_file_samples(part, root, split))
    return Dataset(f"{root.name}-fold{test_fold}", samples, source=str(root), extra={"fold": test_fold})


def _manifest_entries(data: object, origin: Path) -> list[tuple[str, str, str | None]]:
    entries = data.get("images", data.get("samples", [])) if isinstance(data, dict) else data
    out = []
    for entry in entries or []:
        if isinstance(entry, list | tuple) and len(entry) >= 2:  # EmoSet: [label, image_path, annotation]
            out.append((str(entry[1]), str(entry[0]), None))
        elif isinstance(entry, dict):
            image = entry.get("image") or entry.get("path") or entry.get("file")
            label = entry.get("label") or entry.get("emotion")
            if image is None or label is None:
                raise EmoclipError(f"{origin}: every entry needs 'image' and 'label'; got {short_repr(entry)}")
            out.append((str(image), str(label), entry.get("split")))
        else:
            raise EmoclipError(f"{origin}: cannot read entry {short_repr(entry)}; use {{'image':…, 'label':…}}")
    return out


def from_manifest(root: Path, manifests: Sequence[Path] = (), **_) -> Dataset:
    """JSON manifests; a file named train/val/test.json gives its split to entries without one."""
    if not manifests:
        raise EmoclipError("the manifest layout needs a manifest; give --manifest FILE (repeatable)")
    samples = []
    for manifest in manifests:
        try:
            data = json.loads(read_text(manifest, "manifest", MAX_TABLE_BYTES))
        except json.JSONDecodeError as exc:
            raise EmoclipError(f"cannot read manifest {manifest}: {exc}; fix its JSON") from None
        default_split = manifest.stem.lower() if manifest.stem.lower() in SPLIT_FOLDER_NAMES else None
        samples += [Sample(listed_path(root, image, str(manifest)), label, split or default_split)
                    for image, label, split in _manifest_entries(data, manifest)]
    return Dataset(root.name, samples, source=", ".join(map(str, manifests)))


SOURCES: dict[str, Callable[..., Dataset]] = {
    "folders": from_folders,
    "split-file": from_split_file,
    "split-folders": from_split_folders,
    "kfold": from_kfold,
    "manifest": from_manifest,
}


def detect_layout(root: Path) -> str:
    names = {d.name.lower() for d in root.iterdir() if d.is_dir()}
    if names & {"train", "test"}:
        return "split-folders"
    if any(_fold_number(p) is not None for p in root.iterdir()):
        return "kfold"
    return "folders"


def open_dataset(root: str | Path | None = None, split_file: str | Path | None = None,
                 manifests: Sequence[str | Path] = (), layout: str | None = None,
                 fold: int | None = None) -> Dataset:
    """Open a dataset; the layout is inferred from what is given unless ``layout`` names it."""
    split_path = Path(split_file).expanduser() if split_file else None
    manifest_paths = [Path(m).expanduser() for m in manifests]
    base = Path(root).expanduser() if root else (split_path.parent if split_path else
                                                  manifest_paths[0].parent if manifest_paths else None)
    if base is None:
        raise EmoclipError("give the data: --root DIR (class folders), with --split-file FILE or --manifest FILE")
    if not base.is_dir():
        raise EmoclipError(f"data folder {base} does not exist; check --root")
    for f in [split_path, *manifest_paths]:
        if f is not None and not f.is_file():
            raise EmoclipError(f"{f} does not exist or is not a regular file; check the path")
    if layout is None:
        layout = "split-file" if split_path else "manifest" if manifest_paths else detect_layout(base)
    if layout not in SOURCES:
        raise EmoclipError(f"unknown layout '{layout}'; use one of {', '.join(SOURCES)}")
    dataset = SOURCES[layout](base, split_file=split_path, manifests=manifest_paths, fold=fold)
    checked = dataset.samples[:1000]
    missing = [s.path for s in checked if not os.path.lexists(s.path)]
    if missing and len(missing) == len(checked):  # none there: the wrong --root, not a few lost files
        raise EmoclipError(f"{len(missing)} listed images do not exist (first: {name_text(missing[0])}); "
                           "is --root the folder the listed paths are relative to?")
    return dataset  # a few missing images become error rows, counted as lost (exit status 1)


# -- vote distributions --------------------------------------------------------------------------
_PROB_COLUMN = re.compile(r"\[?prob\.?\s*([a-z_ ]+)\]?", re.IGNORECASE)
NEUTRAL = "neutral"


def attach_votes(dataset: Dataset, votes_file: Path, root: Path) -> Dataset:
    """Attach per-image vote distributions (Emotion6 ``ground_truth.txt``).

    'neutral' is not an emotion class of the benchmark: its share is dropped and the remaining
    emotions renormalised; an image whose votes are all neutral gets an all-zero row and is left
    out of label-distribution metrics (``vote_note`` says so).
    """
    rows = _read_table(votes_file)
    header = rows[0]
    prob_cols = {i: _PROB_COLUMN.fullmatch(h.strip()).group(1).strip().lower()
                 for i, h in enumerate(header) if _PROB_COLUMN.fullmatch(h.strip())}
    emotions = [(i, name) for i, name in prob_cols.items() if name != NEUTRAL]
    by_path = {}
    for row in rows[1:]:
        dist = np.array([float(row[i]) for i, _ in emotions])
        total = dist.sum()
        by_path[(root / row[0].strip()).resolve()] = dist / total if total > 0 else np.zeros_like(dist)
    width = len(emotions)
    votes = np.stack([by_path.get(s.path.resolve(), np.zeros(width)) for s in dataset.samples])
    note = ("votes from " + votes_file.name + ": 'neutral' share dropped and the emotions renormalised; "
            "all-neutral images are excluded from distribution metrics")
    return replace(dataset, votes=votes, vote_classes=tuple(name for _, name in emotions), vote_note=note)


# -- making splits -------------------------------------------------------------------------------
def stratified_split(dataset: Dataset, ratios: Sequence[float], names: Sequence[str], seed: int = 0) -> Dataset:
    """Deterministic stratified split: per class, a seeded shuffle cut by ``ratios``."""
    if len(ratios) != len(names) or any(r <= 0 for r in ratios):
        raise EmoclipError("give one positive ratio per split name (e.g. --ratios 0.7,0.3 --names train,test)")
    total = float(sum(ratios))
    rng = np.random.default_rng(seed)
    assigned: list[str | None] = [None] * len(dataset)
    by_label: dict[str, list[int]] = {}
    for i, s in enumerate(dataset.samples):
        by_label.setdefault(s.label, []).append(i)
    for label in sorted(by_label):
        members = np.array(sorted(by_label[label], key=lambda i: str(dataset.samples[i].path)))
        rng.shuffle(members)
        bounds = np.round(np.cumsum(ratios) / total * len(members)).astype(int)
        start = 0
        for name, stop in zip(names, bounds, strict=True):
            for i in members[start:stop]:
                assigned[int(i)] = name
            start = stop
    samples = [replace(s, split=assigned[i]) for i, s in enumerate(dataset.samples)]
    return replace(dataset, samples=samples)


def write_split_file(dataset: Dataset, path: Path, root: Path) -> None:
    from ..atomic import atomic_write

    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["image", "label", "split"])
        for s in dataset.samples:
            writer.writerow([name_text(s.path.relative_to(root).as_posix()), s.label, s.split])
