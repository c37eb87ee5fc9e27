"""Labelled image datasets with fixed splits, from the layouts the affective benchmarks ship in.

Every source yields the same thing, a ``Dataset`` of ``Sample``s (path, label, split, optional
vote distribution). Sources are a registry keyed by layout (``--layout``; inferred when left out):

- ``folders``: ``root/<class>/<image>`` (no split: use ``emoclip split`` to make one);
- ``split-file``: a CSV/TSV of ``image, label, split`` with paths relative to ``--root``; a split
  column of fold names (``fold1``…, from ``emoclip split --folds K``) works with ``--fold K``;
- ``split-folders``: ``root/{train,val,test}/<class>/<image>``;
- ``kfold``: fold folders of any common name (``fold1``, ``partition1``, ``part_1``, ``split1``,
  ``1``, …) holding class folders, or images plus one ``--label-file``; or fold list files
  (``fold1.txt``…); ``--fold K`` is the test fold, the others are train;
- ``labelled``: images anywhere under root, labels from one ``--label-file``;
- ``manifest``: JSON manifests (``{"image", "label", "split"}`` entries);
- the releases as shipped: ``emotionroi`` (``images/<class>/`` + ``training_testing_split/``),
  ``emoset`` (``info.json`` + ``train/val/test.json``), ``fi`` (``emotion_dataset/<emotion>/``, seeded
  80/5/15 split), ``artphoto`` (flat, label in the file name), ``abstract`` (flat + vote CSV; the
  label is the vote maximum, ties dropped).

Labels are kept as the data spells them and resolved through the taxonomy (names, aliases,
synonyms, any case) when they are used; an unknown one is an error naming the label and the file.
Listed image paths must stay inside ``--root``: an absolute path or one that climbs out with ``..``
is refused (a shared split file must not make emoclip read arbitrary files). Split files are read
as UTF-8 tables of bounded size; names use ``files.name_text``'s escapes, so any file name a split
file lists round-trips exactly.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emoclip.core.errors import EmoclipError, TaxonomyError, short_repr
from emoclip.core.files import IMAGE_SUFFIXES, name_from_text, name_text, walk_images
from emoclip.core.userfiles import MAX_TABLE_BYTES, read_text
from emoclip.labels.taxonomy import Taxonomy

log = logging.getLogger("emoclip")

SPLIT_FOLDER_NAMES = ("train", "val", "validation", "test")
# A fold is a folder or list file whose whole name is an optional word and a number.
_FOLD_PATTERN = re.compile(r"(?:fold|folds|partition|part|split|cv|set|subset|f)?[ _-]?(\d+)", re.IGNORECASE)
_HEADER_WORDS = {"image", "images", "path", "file", "filename", "file_name", "image_filename", "name", "img", "id"}
_LABEL_WORDS = ("label", "labels", "emotion", "sentiment", "class", "category", "polarity")
FI_PROTOCOL = (("train", 0.80), ("val", 0.05), ("test", 0.15))


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
            if not self.splits:
                raise EmoclipError(f"dataset {self.name} has no '{name}' split (its layout has none); make one with "
                                   "`emoclip split ROOT -o split.tsv` (or `--folds 5`) and pass --split-file, "
                                   "or score every image with --split all")
            raise EmoclipError(f"dataset {self.name} has no '{name}' split; its splits are: {', '.join(self.splits)}")
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


# -- reading tables ------------------------------------------------------------------------------
def _read_table(path: Path) -> list[list[str]]:
    """Rows of a CSV/TSV/space-separated file, cells stripped of blanks and quotes ('x' or "x").

    The file is bounded UTF-8 text (``userfiles.read_text``); CSV/TSV cells may be quoted and then
    hold any character, a line break included (names are written with ``files.name_text``).
    """
    text = read_text(path, "table", MAX_TABLE_BYTES)
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise EmoclipError(f"{path} is empty; it needs a row per image: image, label[, split]")
    delimiter = "\t" if "\t" in first else "," if "," in first else None
    try:
        rows = (csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', strict=True)
                if delimiter else (line.split() for line in text.splitlines()))
        return [[cell.strip().strip("'\"").strip() for cell in row] for row in rows if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise EmoclipError(f"cannot read table {path}: {exc}; check its quoting") from None


def _looks_like_image(cell: str) -> bool:
    return Path(cell).suffix.lower() in IMAGE_SUFFIXES


def _is_header(row: Sequence[str]) -> bool:
    """A first row is a header when its first cell names a column rather than an image."""
    first = row[0].strip().strip("[]").lower()
    if first.isdigit():  # an image id
        return False
    return first in _HEADER_WORDS or (not _looks_like_image(row[0]) and not any(_looks_like_image(c) for c in row))


class ImageIndex:
    """Finds an image under ``root`` by relative path or bare file name (the forms label tables use)."""

    def __init__(self, root: Path, images: Sequence[Path] | None = None) -> None:
        self.root = root
        self.images = list(images) if images is not None else _images_in(root)
        self.by_name: dict[str, list[Path]] = {}
        for p in self.images:
            self.by_name.setdefault(p.name.lower(), []).append(p)
            if p.stem.lower() != p.name.lower():
                self.by_name.setdefault(p.stem.lower(), []).append(p)  # tables that list ids without a suffix

    def find(self, key: str, origin: str) -> Path | None:
        listed_path(self.root, key, origin)  # an absolute path or a '..' escape is refused, never looked up
        key = key.strip().replace("\\", "/")
        direct = self.root / key
        if "/" in key and direct.is_file():
            return direct
        matches = self.by_name.get(Path(key).name.lower(), [])
        if len(matches) > 1:
            suffix = [m for m in matches if m.as_posix().lower().endswith("/" + key.lower())]
            if len(suffix) == 1:
                return suffix[0]
            raise EmoclipError(f"{origin}: '{key}' matches {len(matches)} images under {self.root} "
                               f"({matches[0]}, {matches[1]}, …); give paths relative to --root instead")
        return matches[0] if matches else None


def read_label_table(path: Path) -> list[tuple[str, str]]:
    """``image, label`` pairs of a label table: bare names or relative paths, header optional.

    With a header the label column is the one named label/emotion/sentiment/class/category (else
    the second); without one it is the second column.
    """
    return read_image_table(path, _LABEL_WORDS, "label")


def read_image_table(path: Path, value_words: Sequence[str], what: str) -> list[tuple[str, str]]:
    """``image, value`` pairs of a table keyed by image (labels, captions): one format for all of them.

    CSV, TSV or space-separated; bare file names or paths relative to the data root; a header row is
    optional (then the image column is the one named image/path/file…, the value column the first
    named one of ``value_words``, else the second).
    """
    rows = _read_table(path)
    image_col, value_col = 0, 1
    if _is_header(rows[0]):
        header = [h.strip("[] ").lower() for h in rows[0]]
        named = [i for i, h in enumerate(header) if h in value_words]
        value_col = named[0] if named else 1
        image_col = next((i for i, h in enumerate(header) if h in _HEADER_WORDS), 0)
        rows = rows[1:]
    pairs = []
    for n, row in enumerate(rows, 1):
        if len(row) <= max(image_col, value_col):
            raise EmoclipError(f"{path}: row {n} {short_repr(row)} has no {what} column; expected "
                               f"'image<TAB>{what}' rows")
        pairs.append((row[image_col], row[value_col]))
    return pairs


def report_label_rows_without_image(label_file: Path, unmatched: Sequence[str], total: int, root: Path) -> None:
    """Rows of a label table naming no image are counted and said, never dropped silently."""
    log.warning("%d of %d rows of %s name no image under %s (first: %s); they are left out", len(unmatched), total,
                label_file, root, short_repr(unmatched[0]))


def match_label_rows(index: ImageIndex, label_file: Path) -> tuple[dict[Path, str], list[str], list]:
    """The label table's rows matched to images through ``index``: {image: label}, the keys that name
    no image (counted and reported by the callers), and the rows themselves."""
    labels: dict[Path, str] = {}
    unmatched: list[str] = []
    rows = read_label_table(label_file)
    for key, label in rows:
        found = index.find(key, str(label_file))
        if found is not None:
            labels[found] = label
        else:
            unmatched.append(key)
    return labels, unmatched, rows


def _labels_from_table(label_file: Path, images: Sequence[Path], root: Path, split_of: Callable[[Path], str | None],
                       report_unmatched: bool = True) -> list[Sample]:
    """Samples for ``images`` with labels from ``label_file``; unlisted images are an error naming one."""
    index = ImageIndex(root, images)
    labels, unmatched, rows = match_label_rows(index, label_file)
    if unmatched and report_unmatched:
        report_label_rows_without_image(label_file, unmatched, len(rows), root)
    unlabelled = [p for p in images if p not in labels]
    if len(unlabelled) == len(images) and images:
        raise EmoclipError(f"no image under {root} is listed in {label_file} (first image: {images[0].name}); "
                           "its first column must hold the file names or paths relative to --root")
    if unlabelled:
        raise EmoclipError(f"{len(unlabelled)} images are not in {label_file} (first: {unlabelled[0]}); "
                           "list every image, or remove the unlabelled ones")
    return [Sample(p, labels[p], split_of(p)) for p in images]


# -- sources -------------------------------------------------------------------------------------
def _images_in(folder: Path) -> list[Path]:
    return walk_images(folder)  # what it passes over is counted in a warning



def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


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
    return [Sample(p, c.name, split) for c in _subfolders(root) for p in _images_in(c)]


def from_folders(root: Path, label_file: Path | None = None, **_) -> Dataset:
    if label_file is not None:
        return from_labelled(root, label_file)
    samples = _class_folder_samples(root, None)
    if not samples:
        raise EmoclipError(f"no images found under {root}/<class>/; expected one folder per class "
                           "(or give --label-file for a folder of images with a separate label table)")
    return Dataset(root.name, samples, source=str(root))


def from_labelled(root: Path, label_file: Path | None = None, **_) -> Dataset:
    """Images anywhere under ``root``, their labels from one table."""
    if label_file is None:
        raise EmoclipError("the labelled layout needs --label-file FILE (image<TAB>label rows)")
    samples = _labels_from_table(label_file, _images_in(root), root, lambda p: None)
    return Dataset(root.name, samples, source=f"{root} + {label_file}")


def from_split_folders(root: Path, **_) -> Dataset:
    samples = []
    for d in _subfolders(root):
        if d.name.lower() in SPLIT_FOLDER_NAMES:
            split = "val" if d.name.lower() == "validation" else d.name.lower()
            samples += _class_folder_samples(d, split)
    if not samples:
        raise EmoclipError(f"no images under {root}/{{train,val,test}}/<class>/; check --root and --layout")
    return Dataset(root.name, samples, source=str(root))


def _list_file_samples(path: Path, base: Path, split: str | None, index: ImageIndex | None = None,
                       labels: dict[Path, str] | None = None) -> list[Sample]:
    """A fold list: ``image<sep>label`` rows (or bare images when a label table gives the labels)."""
    rows = _read_table(path)
    if rows and _is_header(rows[0]):
        rows = rows[1:]
    samples = []
    for n, fields in enumerate(rows, 1):
        checked = listed_path(base, fields[0], f"{path}:{n}")  # never outside --root
        image = (index.find(fields[0], str(path)) if index else None) or checked
        if len(fields) >= 2:
            samples.append(Sample(image, fields[1], split))
        elif labels is not None and image in labels:
            samples.append(Sample(image, labels[image], split))
        else:
            raise EmoclipError(f"{path}:{n}: expected 'image<TAB>label', got {short_repr(fields)}; fix that row "
                               "(or give --label-file with the labels)")
    return samples


def from_split_file(root: Path, split_file: Path | None = None, **_) -> Dataset:
    """``image, label, split`` rows (header optional; tab or comma separated), paths relative to root."""
    if split_file is None:
        raise EmoclipError("the split-file layout needs a split file; give --split-file FILE")
    rows = _read_table(split_file)
    header = [h.strip("[] ").lower() for h in rows[0]]
    if _is_header(rows[0]) and any(h in _LABEL_WORDS for h in header):
        image_col = next((i for i, h in enumerate(header) if h in _HEADER_WORDS), 0)
        label_col = next(i for i, h in enumerate(header) if h in _LABEL_WORDS)
        split_col = next((i for i, h in enumerate(header) if h in ("split", "fold", "set", "partition")), None)
        rows = rows[1:]
    else:
        image_col, label_col, split_col = 0, 1, 2 if len(rows[0]) > 2 else None
    samples = []
    for n, row in enumerate(rows, 2):
        if len(row) <= max(image_col, label_col):
            raise EmoclipError(f"{split_file}:{n}: expected image, label and split columns, got {short_repr(row)}; "
                               "fix that row")
        split = row[split_col].strip() if split_col is not None and split_col < len(row) else None
        samples.append(Sample(listed_path(root, row[image_col], f"{split_file}:{n}"), row[label_col].strip(),
                              split or None))
    if not samples:
        raise EmoclipError(f"{split_file} lists no images (only a header); it needs a row per image")
    dataset = Dataset(split_file.parent.name, samples, source=str(split_file))
    votes_file = split_file.parent / "ground_truth.txt"
    return attach_votes(dataset, votes_file, root) if votes_file.is_file() else dataset


def fold_number(name: Path | str) -> int | None:
    """The fold number of a folder or list file named like a fold (``fold1``, ``partition_2``, ``3``…)."""
    path = Path(str(name))
    stem = path.stem if path.suffix.lower() in (".txt", ".tsv", ".csv") else path.name
    match = _FOLD_PATTERN.fullmatch(stem)
    return int(match.group(1)) if match else None


def _fold_parts(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if fold_number(p) is not None and not p.name.startswith(".")
                   and (p.is_dir() or p.suffix.lower() in (".txt", ".tsv", ".csv"))), key=lambda p: fold_number(p) or 0)


def _pick_fold(numbers: Sequence[int], fold: int | None, where: str) -> int:
    """The test fold: ``fold``, or (never silently) the first one, said in a warning."""
    test_fold = min(numbers) if fold is None else fold
    if fold is None:
        log.warning("no --fold given: fold %d of %d in %s is the test fold, the others train; pass --fold K "
                    "(one run per fold) to choose", test_fold, len(set(numbers)), where)
    if test_fold not in numbers:
        raise EmoclipError(f"--fold {fold} does not exist in {where}; folds: {', '.join(map(str, sorted(numbers)))}")
    return test_fold


def from_kfold(root: Path, fold: int | None = None, label_file: Path | None = None, **_) -> Dataset:
    """Folds are sub-folders or list files named like a fold; ``fold`` is the test fold, the others train."""
    parts = _fold_parts(root)
    if not parts:
        raise EmoclipError(f"no fold folders or list files in {root} (expected names like fold1, partition1, "
                           "part_1, split1 or 1)")
    numbers = [fold_number(p) or 0 for p in parts]  # every part has a number (_fold_parts)
    test_fold = _pick_fold(numbers, fold, str(root))
    split_of = {n: ("test" if n == test_fold else "train") for n in numbers}
    index = ImageIndex(root) if label_file is not None or any(not p.is_dir() for p in parts) else None
    table = None
    if label_file is not None:
        assert index is not None
        table, unmatched, rows = match_label_rows(index, label_file)
        if unmatched:  # counted once over all folds (each fold's own pass sees the others' rows)
            report_label_rows_without_image(label_file, unmatched, len(rows), root)
    samples: list[Sample] = []
    for part, number in zip(parts, numbers, strict=True):
        split = split_of[number]
        if not part.is_dir():
            samples += _list_file_samples(part, root, split, index, table)
        elif label_file is not None:
            samples += _labels_from_table(label_file, _images_in(part), root, _constant_split(split),
                                          report_unmatched=False)
        else:
            in_folders = _class_folder_samples(part, split)
            if not in_folders and _images_in(part):
                raise EmoclipError(f"{part} holds images but no class folders; give the labels with --label-file "
                                   "FILE (image<TAB>label rows, bare file names or paths relative to --root)")
            samples += in_folders
    return Dataset(f"{root.name}-fold{test_fold}", samples, source=str(root),
                   extra={"fold": test_fold, "folds": len(numbers)})


def _constant_split(split: str) -> Callable[[Path], str]:
    """The split of every image of one fold part."""
    return lambda _path: split


def _manifest_entries(data: Any, origin: Path) -> list[tuple[str, str, str | None]]:
    entries = data.get("images", data.get("samples", [])) if isinstance(data, dict) else data
    out: list[tuple[str, str, str | None]] = []
    for entry in entries or []:
        if isinstance(entry, list | tuple) and len(entry) >= 4:  # EmoSet: [emotion, id, image, annotation]
            out.append((str(entry[2]), str(entry[0]), None))
        elif isinstance(entry, list | tuple) and len(entry) >= 2:  # [label, image(, annotation)]
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


def _read_json(path: Path) -> object:
    try:
        return json.loads(read_text(path, "manifest", MAX_TABLE_BYTES))
    except json.JSONDecodeError as exc:
        raise EmoclipError(f"cannot read {path}: {exc}; fix its JSON") from None


def from_manifest(root: Path, manifests: Sequence[Path] = (), **_) -> Dataset:
    """JSON manifests; a file named train/val/test.json gives its split to entries without one."""
    if not manifests:
        raise EmoclipError("the manifest layout needs a manifest; give --manifest FILE (repeatable)")
    samples = []
    for manifest in manifests:
        default_split = manifest.stem.lower() if manifest.stem.lower() in SPLIT_FOLDER_NAMES else None
        samples += [Sample(listed_path(root, image, str(manifest)), label, split or default_split)
                    for image, label, split in _manifest_entries(_read_json(manifest), manifest)]
    return Dataset(root.name, samples, source=", ".join(map(str, manifests)))


# -- the releases as shipped ---------------------------------------------------------------------
def from_emotionroi(root: Path, **_) -> Dataset:
    """EmotionROI: ``images/<class>/``; ``training_testing_split/{training,testing}.txt`` of ``class/file``."""
    images = root / "images" if (root / "images").is_dir() else root
    lists = root / "training_testing_split"
    if not lists.is_dir():
        return replace(from_folders(images), name=root.name)
    samples = []
    for split, name in (("train", "training.txt"), ("test", "testing.txt")):
        path = lists / name
        if not path.is_file():
            raise EmoclipError(f"EmotionROI layout: {path} is missing (expected training.txt and testing.txt)")
        for n, row in enumerate(_read_table(path), 1):
            relative = row[0].replace("\\", "/").strip("/")
            if "/" not in relative:
                raise EmoclipError(f"{path}:{n}: expected 'class/filename', got {row[0]!r}")
            samples.append(Sample(images / relative, relative.split("/")[0], split))
    return Dataset(root.name, samples, source=str(lists))


def from_emoset(root: Path, **_) -> Dataset:
    """EmoSet-118K: ``train/val/test.json`` lists of ``[emotion, id, image, annotation]`` relative to root.

    ``info.json`` gives the label order (not alphabetical); it is kept in ``extra['label_order']`` and
    resolves labels written as indices.
    """
    info = _read_json(root / "info.json") if (root / "info.json").is_file() else {}
    label2idx = info.get("label2idx", {}) if isinstance(info, dict) else {}
    order = [name for name, _ in sorted(label2idx.items(), key=lambda kv: int(kv[1]))]
    samples = []
    for split in ("train", "val", "test"):
        path = root / f"{split}.json"
        if path.is_file():
            for image, label, _split in _manifest_entries(_read_json(path), path):
                if label.isdigit() and order:
                    label = order[int(label)]
                samples.append(Sample(root / image, label, split))
    if not samples:
        raise EmoclipError(f"EmoSet layout: no train.json/val.json/test.json in {root}")
    return Dataset(root.name, samples, source=str(root), extra={"label_order": order})


def from_fi(root: Path, split_seed: int = 0, **_) -> Dataset:
    """FI as distributed: ``emotion_dataset/<emotion>/<emotion>_<id>.jpg``, no official split.

    The common protocol is a seeded random 80/5/15 train/val/test split; emoclip makes it stratified
    per emotion with ``split_seed`` (recorded), so every run with the same seed sees the same split.
    """
    images = root / "emotion_dataset" if (root / "emotion_dataset").is_dir() else root
    data = from_folders(images)
    names, ratios = [name for name, _ in FI_PROTOCOL], [ratio for _, ratio in FI_PROTOCOL]
    split = stratified_split(data, ratios, names, split_seed)
    return replace(split, name=root.name, extra={"split_protocol": "80/5/15 stratified", "split_seed": split_seed})


_NAME_LABEL = re.compile(r"([A-Za-z]+)[_-]?\d+")


def from_artphoto(root: Path, **_) -> Dataset:
    """ArtPhoto: one flat folder, the label in the file name (``<emotion>_<n>.jpg``); no split."""
    samples = []
    for p in _images_in(root):
        match = _NAME_LABEL.match(p.stem)
        if not match:
            raise EmoclipError(f"ArtPhoto layout: cannot read a label from the file name {p.name}; "
                               "expected '<emotion>_<n>.jpg'")
        samples.append(Sample(p, match.group(1).lower(), None))
    if not samples:
        raise EmoclipError(f"no images in {root}")
    return Dataset(root.name, samples, source=str(root))


def _vote_table_in(root: Path) -> Path | None:
    tables = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".txt"))
    return tables[0] if len(tables) == 1 else None


def from_abstract(root: Path, votes_file: Path | None = None, **_) -> Dataset:
    """Abstract: a flat folder and a CSV of vote counts (one quoted column per emotion).

    The label is the vote maximum; images whose maximum is tied are dropped, as the literature
    does (the count is in ``extra['dropped_ties']``); the votes stay as the label distribution.
    """
    table = votes_file or _vote_table_in(root)
    if table is None:
        raise EmoclipError(f"Abstract layout: give the vote table with --votes FILE (none or several in {root})")
    classes, by_image = read_vote_table(table)
    index = ImageIndex(root)
    samples, rows, ties = [], [], 0
    for key, counts in by_image.items():
        path = index.find(key, str(table))
        if path is None:
            continue
        top = np.flatnonzero(counts == counts.max())
        if len(top) != 1 or counts.max() <= 0:
            ties += 1
            continue
        samples.append(Sample(path, classes[int(top[0])], None))
        rows.append(counts / counts.sum())
    if not samples:
        raise EmoclipError(f"no image of {table} was found under {root}")
    return Dataset(root.name, samples, source=f"{root} + {table}", votes=np.stack(rows), vote_classes=tuple(classes),
                   vote_note=f"votes from {table.name}; {ties} images with a tied maximum dropped",
                   extra={"dropped_ties": ties})


SOURCES: dict[str, Callable[..., Dataset]] = {
    "folders": from_folders,
    "labelled": from_labelled,
    "split-file": from_split_file,
    "split-folders": from_split_folders,
    "kfold": from_kfold,
    "manifest": from_manifest,
    "emotionroi": from_emotionroi,
    "emoset": from_emoset,
    "fi": from_fi,
    "artphoto": from_artphoto,
    "abstract": from_abstract,
}
LAYOUTS = tuple(SOURCES)


def detect_layout(root: Path, label_file: Path | None = None) -> str:
    """The layout of a folder, from what it holds (each release has a recognisable shape)."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    dirs = {p.name.lower() for p in entries if p.is_dir()}
    files = {p.name.lower() for p in entries if p.is_file()}
    if "training_testing_split" in dirs:
        return "emotionroi"
    if "info.json" in files and files & {"train.json", "val.json", "test.json"}:
        return "emoset"
    if "emotion_dataset" in dirs:
        return "fi"
    if dirs & {"train", "test"}:
        return "split-folders"
    if any(fold_number(p) is not None for p in entries if p.is_dir() or p.suffix.lower() in (".txt", ".tsv", ".csv")):
        return "kfold"
    if label_file is not None:
        return "labelled"
    if not dirs:
        if any(p.suffix.lower() == ".csv" for p in entries):
            return "abstract"
        if any(_NAME_LABEL.fullmatch(p.stem) for p in entries if p.suffix.lower() in IMAGE_SUFFIXES):
            return "artphoto"
    return "folders"


def _apply_fold(dataset: Dataset, fold: int | None) -> Dataset:
    """Split values naming folds (``fold1``… from ``emoclip split --folds``): ``fold`` is test, the rest train."""
    names = {s.split for s in dataset.samples}
    numbers = {n: fold_number(n) for n in names if n is not None}
    if not numbers or None in numbers.values() or None in names or names & set(SPLIT_FOLDER_NAMES):
        if fold is not None and dataset.extra.get("fold") is None:
            raise EmoclipError(f"--fold {fold}: dataset {dataset.name} has no folds; its splits are "
                               f"{', '.join(dataset.splits) or 'none'}")
        return dataset
    folds = {name: number for name, number in numbers.items() if number is not None}  # all of them, checked above
    test_fold = _pick_fold(sorted(set(folds.values())), fold, dataset.source)
    samples = [replace(s, split="test" if folds[str(s.split)] == test_fold else "train") for s in dataset.samples]
    return replace(dataset, name=f"{dataset.name}-fold{test_fold}", samples=samples,
                   extra={**dataset.extra, "fold": test_fold, "folds": len(set(numbers.values()))})


def open_dataset(root: str | Path | None = None, split_file: str | Path | None = None,
                 manifests: Sequence[str | Path] = (), layout: str | None = None,
                 fold: int | None = None, label_file: str | Path | None = None, votes: str | Path | None = None,
                 split_seed: int = 0) -> Dataset:
    """Open a dataset; the layout is inferred from what is given unless ``layout`` names it.

    ``label_file`` gives labels for layouts without class folders; ``votes`` attaches per-image vote
    distributions (label-distribution metrics, ``--target votes``) to any layout.
    """
    split_path = Path(split_file).expanduser() if split_file else None
    manifest_paths = [Path(m).expanduser() for m in manifests]
    label_path = Path(label_file).expanduser() if label_file else None
    votes_path = Path(votes).expanduser() if votes else None
    base = Path(root).expanduser() if root else (split_path.parent if split_path else
                                                  manifest_paths[0].parent if manifest_paths else None)
    if base is None:
        raise EmoclipError("give the data: --root DIR (class folders), with --split-file FILE or --manifest FILE")
    if not base.is_dir():
        raise EmoclipError(f"data folder {base} does not exist; check --root")
    for f in [split_path, *manifest_paths, label_path, votes_path]:
        if f is not None and not f.is_file():
            raise EmoclipError(f"{f} does not exist or is not a regular file; check the path")
    if layout is None:
        layout = ("split-file" if split_path else "manifest" if manifest_paths else
                  "abstract" if votes_path and label_path is None and not _subfolders(base)
                  and not any(fold_number(p) is not None for p in base.iterdir()) else
                  detect_layout(base, label_path))
    if layout not in SOURCES:
        raise EmoclipError(f"unknown layout '{layout}'; use one of {', '.join(SOURCES)}")
    dataset = SOURCES[layout](base, split_file=split_path, manifests=manifest_paths, fold=fold, label_file=label_path,
                              votes_file=votes_path, split_seed=split_seed)
    dataset = _apply_fold(dataset, fold)
    dataset.extra.setdefault("layout", layout)
    checked = dataset.samples[:1000]
    missing = [s.path for s in checked if not os.path.lexists(s.path)]
    if missing and len(missing) == len(checked):  # none there: the wrong --root, not a few lost files
        raise EmoclipError(f"{len(missing)} listed images do not exist (first: {name_text(missing[0])}); "
                           "is --root the folder the listed paths are relative to?")
    if votes_path is not None and layout != "abstract":
        dataset = attach_votes(dataset, votes_path, base)
    return dataset  # a few missing images become error rows, counted as lost (exit status 1)


# -- vote distributions --------------------------------------------------------------------------
_PROB_COLUMN = re.compile(r"\[?prob\.?\s*([a-z_ ]+)\]?", re.IGNORECASE)
NEUTRAL = "neutral"
_NOT_EMOTIONS = {"valence", "arousal", "dominance", "split", "fold", "label", "id", "index", "count", "total"}


def read_vote_table(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Emotion columns and per-image vote vectors of a vote table (counts or probabilities).

    Emotion6's ``[prob. X]`` columns when present (valence/arousal ignored), else every numeric
    column after the image column (Abstract's quoted ``'Amusement'``… counts). 'neutral' is dropped.
    """
    rows = _read_table(path)
    header = rows[0]
    prob = {i: m.group(1).strip().lower() for i, h in enumerate(header) if (m := _PROB_COLUMN.fullmatch(h.strip()))}
    columns = prob or {i: h.strip("[] ").lower() for i, h in enumerate(header)
                       if i > 0 and h.strip("[] ").lower() not in _NOT_EMOTIONS and h.strip()}
    emotions = [(i, name) for i, name in columns.items() if name != NEUTRAL]
    if not emotions:
        raise EmoclipError(f"{path}: no emotion columns in the header {header!r}; expected one column per emotion "
                           "('[prob. joy]' or 'joy')")
    by_image: dict[str, np.ndarray] = {}
    for n, row in enumerate(rows[1:], 2):
        try:
            by_image[row[0]] = np.array([float(row[i]) for i, _ in emotions])
        except (ValueError, IndexError):
            raise EmoclipError(f"{path}:{n}: expected a number in every emotion column, got {row!r}") from None
    return [name for _, name in emotions], by_image


def attach_votes(dataset: Dataset, votes_file: Path, root: Path) -> Dataset:
    """Attach per-image vote distributions (Emotion6 ``ground_truth.txt``, or any vote table).

    Images are matched by path relative to ``root`` or by bare file name. 'neutral' is not an emotion
    class of the benchmarks: its share is dropped and the remaining emotions renormalised; an image
    whose votes are all neutral (or that the table does not list) gets an all-zero row and is left out
    of label-distribution metrics and vote training (``vote_note`` says so).
    """
    classes, by_image = read_vote_table(votes_file)
    index = ImageIndex(root, [s.path for s in dataset.samples])
    by_path: dict[Path, np.ndarray] = {}
    for key, counts in by_image.items():
        found = index.find(key, str(votes_file))
        if found is not None:
            total = counts.sum()
            by_path[found] = counts / total if total > 0 else np.zeros_like(counts)
    if not by_path and len(dataset):
        raise EmoclipError(f"no image of the dataset is listed in {votes_file}; its first column must hold "
                           "file names or paths relative to --root")
    width = len(classes)
    votes = np.stack([by_path.get(s.path, np.zeros(width)) for s in dataset.samples]) if len(dataset) \
        else np.zeros((0, width))
    unlisted = sum(1 for s in dataset.samples if s.path not in by_path)
    note = (f"votes from {votes_file.name}: 'neutral' share dropped and the emotions renormalised; all-neutral "
            f"images are excluded from distribution metrics" + (f"; {unlisted} images not in the table" if unlisted
                                                                 else ""))
    return replace(dataset, votes=votes, vote_classes=tuple(classes), vote_note=note)


# -- making splits -------------------------------------------------------------------------------
def stratified_split(dataset: Dataset, ratios: Sequence[float], names: Sequence[str], seed: int = 0) -> Dataset:
    """Deterministic stratified split: per class, a seeded shuffle cut by ``ratios``."""
    if len(ratios) != len(names) or not all(math.isfinite(r) and r > 0 for r in ratios):
        raise EmoclipError(f"give one positive ratio per split name (got ratios {', '.join(map(str, ratios))} for "
                           f"names {', '.join(map(repr, names))}); e.g. --ratios 0.7,0.3 --names train,test")
    bad = [n for n in names if not n.strip() or n != n.strip() or "\t" in n or "\n" in n]
    if bad:
        raise EmoclipError(f"split names must be non-empty words, got {', '.join(map(repr, names))}; "
                           "e.g. --names train,test")
    if len(set(names)) != len(names):
        raise EmoclipError(f"split names must differ, got {', '.join(names)}; e.g. --names train,val,test")
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
    from emoclip.core.atomic import atomic_write

    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["image", "label", "split"])
        for s in dataset.samples:
            writer.writerow([name_text(s.path.relative_to(root).as_posix()), s.label, s.split or ""])


def stratified_folds(dataset: Dataset, folds: int, seed: int = 0) -> Dataset:
    """Stratified k-folds: per class, a seeded shuffle dealt round-robin into ``fold1``…``foldK``.

    Every fold gets each class's images in proportion (sizes differ by at most one per class); the
    split file it writes opens with ``--split-file … --fold K`` (fold K is test, the rest train).
    """
    if folds < 2:
        raise EmoclipError(f"--folds must be at least 2, got {folds}")
    if folds > len(dataset):
        raise EmoclipError(f"--folds {folds} is more folds than the {len(dataset)} images; use at most "
                           f"{len(dataset)} (5 or 10 are usual)")
    smallest = min((len(m), label) for label, m in _by_label(dataset).items())
    if folds > smallest[0]:
        log.warning("class '%s' has %d images, fewer than --folds %d: some test folds will lack it", smallest[1],
                    smallest[0], folds)
    rng = np.random.default_rng(seed)
    assigned: dict[int, str] = {}
    offset = 0
    for _label, members in sorted(_by_label(dataset).items()):
        order = np.array(sorted(members, key=lambda i: str(dataset.samples[i].path)))
        rng.shuffle(order)
        for rank, i in enumerate(order):
            assigned[int(i)] = f"fold{(rank + offset) % folds + 1}"
        offset += len(order)  # the next class starts where this one stopped: fold sizes stay even
    return replace(dataset, samples=[replace(s, split=assigned[i]) for i, s in enumerate(dataset.samples)])


def _by_label(dataset: Dataset, label_of: Callable[[Sample], object] | None = None) -> dict[object, list[int]]:
    groups: dict[object, list[int]] = {}
    for i, s in enumerate(dataset.samples):
        groups.setdefault(label_of(s) if label_of else s.label, []).append(i)
    return groups


def few_shot(dataset: Dataset, shots: int, seed: int = 0, label_of: Callable[[Sample], object] | None = None
             ) -> tuple[Dataset, dict]:
    """K images per class, drawn with a seeded generator (the few-shot protocol of CoOp and its kin).

    The draw depends only on the seed, the shots and the dataset's files (sorted by path), so the same
    run sees the same images on any machine; a class with fewer than K images keeps all of them (the
    returned record says which). ``label_of`` groups by a resolved class (aliases of one class count
    together). Reusable by every trainer: it works on any ``Dataset``.
    """
    if shots < 1:
        raise EmoclipError(f"--shots must be at least 1, got {shots}")
    rng = np.random.default_rng([seed, shots])
    keep: list[int] = []
    short: dict[str, int] = {}
    for label, members in sorted(_by_label(dataset, label_of).items(), key=lambda kv: str(kv[0])):
        order = sorted(members, key=lambda i: str(dataset.samples[i].path))
        if len(order) <= shots:
            chosen = order
            if len(order) < shots:
                short[str(label)] = len(order)
        else:
            chosen = [order[int(j)] for j in rng.choice(len(order), size=shots, replace=False)]
        keep += chosen
    keep.sort()
    record = {"shots": shots, "seed": seed, "images": len(keep), "classes_with_fewer": short}
    return dataset.subset(keep, dataset.name), record


def check_folder_labels(dataset: Dataset, taxonomy: Taxonomy | None) -> None:
    """Refuse labels that are not classes of ``taxonomy`` (e.g. fold folders taken for classes).

    Without a taxonomy only names that are plainly folds or splits (``partition1``, ``train``) are refused.
    """
    labels = sorted({s.label for s in dataset.samples})
    folds = [b for b in labels if fold_number(b) is not None or b.lower() in SPLIT_FOLDER_NAMES]
    bad = [b for b in labels if not _resolves(taxonomy, b)] if taxonomy is not None else folds
    if not bad:
        return
    fix = ("these are fold or split folders, not classes: give the labels with --label-file FILE "
           "(image<TAB>label rows) and let the layout be inferred, or --layout kfold" if set(bad) <= set(folds) else
           f"rename the folders to classes of {taxonomy.name if taxonomy else 'your taxonomy'} or pass the taxonomy "
           "they belong to with -t")
    known = f"taxonomy '{taxonomy.name}' ({', '.join(taxonomy.names)})" if taxonomy else "any taxonomy"
    raise TaxonomyError(f"folder names {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''} are not labels of "
                        f"{known}; {fix}")


def _resolves(taxonomy: Taxonomy, label: str) -> bool:
    try:
        taxonomy.index(label)
    except TaxonomyError:
        return False
    return True
