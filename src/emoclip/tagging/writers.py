"""Writing predictions as JSON Lines, JSON, CSV or Parquet, to a file (atomically) or to stdout.

Formats are a registry: each writer gets the rows one at a time, so JSONL and CSV stream to the
terminal as images are tagged; a file target is written through ``atomic_write`` and appears only
when the run finishes.

Every row is valid in its format whatever the file name: paths are written with ``name_text``
(undecodable bytes and control characters escaped reversibly, so a ``\r`` in a name can never add
a CSV row and a non-UTF-8 name can never break the writer), non-finite numbers become null, and an
unknown output suffix is refused rather than silently written as JSON Lines.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from emoclip.core.atomic import atomic_write
from emoclip.core.errors import EmoclipError, shorten
from emoclip.core.files import name_text
from emoclip.tagging.tagger import Prediction

PROBABILITY_DIGITS = 6


def _number(value: float | None) -> float | None:
    """Rounded, and null where not finite (JSON has no NaN; a row must never be invalid)."""
    return None if value is None or not math.isfinite(value) else round(value, PROBABILITY_DIGITS)


def prediction_record(pred: Prediction) -> dict:
    """The JSON form of a prediction row."""
    def rounded(d: dict[str, float]) -> dict[str, float | None]:
        return {k: _number(v) for k, v in d.items()}

    record: dict = {"path": name_text(pred.path), "label": pred.label,
                    "probability": _number(pred.probability),
                    "top_k": [{"label": lbl, "probability": _number(p)} for lbl, p in pred.top_k],
                    "distribution": rounded(pred.distribution)}
    for level, dist in pred.levels.items():
        best = max(dist, key=dist.__getitem__)
        record[level] = {"label": best, "probability": _number(dist[best]), "distribution": rounded(dist)}
    if pred.multi is not None:
        record["multi"] = [{"label": lbl, "probability": _number(p)} for lbl, p in pred.multi]
    if pred.generated is not None:
        record["generated"] = pred.generated
    record["error"] = None if pred.error is None else shorten(pred.error)
    return record


class RowWriter:
    """Base writer: receives predictions one by one; ``finish`` completes the document.

    ``extra_columns`` are input columns carried next to the prediction (a WebDataset sample's
    ``key`` and ``caption``): every row has them, after the prediction's own, as in a shard folder.
    """

    binary = False

    def __init__(self, handle: IO, class_names: Sequence[str], levels: Mapping[str, Sequence[str]],
                 generated: bool = False, extra_columns: Sequence[str] = ()) -> None:
        self.handle = handle
        self.class_names = list(class_names)
        self.levels = levels
        self.generated = generated  # a `generated` column (methods that write a sentence)
        self.extra_columns = tuple(extra_columns)

    def extras(self, extra: dict | None) -> dict:
        """The extra columns of one row (None where an item has no such value)."""
        return {name: (extra or {}).get(name) for name in self.extra_columns}

    def write(self, pred: Prediction, extra: dict | None = None) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after the last row (not on failure)."""


class JsonlWriter(RowWriter):
    def write(self, pred: Prediction, extra: dict | None = None) -> None:
        record = {**prediction_record(pred), **self.extras(extra)}
        self.handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self.handle.flush()


class JsonWriter(RowWriter):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.count = 0
        self.handle.write("[")

    def write(self, pred: Prediction, extra: dict | None = None) -> None:
        record = {**prediction_record(pred), **self.extras(extra)}
        self.handle.write(("," if self.count else "") + "\n  " + json.dumps(record, ensure_ascii=False,
                                                                            allow_nan=False))
        self.count += 1

    def finish(self) -> None:
        self.handle.write("\n]\n" if self.count else "]\n")


def flat_row(pred: Prediction, class_names: Sequence[str], levels: Mapping[str, Sequence[str]],
             generated: bool = False) -> dict:
    """One flat row (CSV and Parquet): label, probability, top-k, one column per class and level."""
    fmt = _number
    row: dict = {"path": name_text(pred.path), "label": pred.label or "", "probability": fmt(pred.probability),
                 "top_k": "|".join(f"{lbl}:{p:.4f}" for lbl, p in pred.top_k)}
    row.update({f"p_{c}": fmt(pred.distribution.get(c)) for c in class_names})
    for level, names in levels.items():
        dist = pred.levels.get(level, {})
        row[f"{level}_label"] = max(dist, key=dist.__getitem__) if dist else ""
        row.update({f"{level}_p_{c}": fmt(dist.get(c)) for c in names})
    if pred.multi is not None:
        row["multi"] = "|".join(f"{lbl}:{p:.4f}" for lbl, p in pred.multi)
    if generated:
        row["generated"] = pred.generated or ""
    row["error"] = shorten(pred.error) if pred.error else ""
    return row


class CsvWriter(RowWriter):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writer: csv.DictWriter | None = None

    def _header(self, pred: Prediction) -> csv.DictWriter:
        """The columns of the first row (optional ones, like ``multi``, are on every row or none)."""
        if self.writer is None:
            fields = list(flat_row(Prediction(path="", multi=pred.multi), self.class_names, self.levels,
                                    self.generated)) + list(self.extra_columns)
            self.writer = csv.DictWriter(self.handle, fieldnames=fields, lineterminator="\n")
            self.writer.writeheader()
        return self.writer

    def finish(self) -> None:
        self._header(Prediction(path=""))

    def write(self, pred: Prediction, extra: dict | None = None) -> None:
        self._header(pred)
        assert self.writer is not None
        row = {**flat_row(pred, self.class_names, self.levels, self.generated), **self.extras(extra)}
        self.writer.writerow({k: "" if v is None else v for k, v in row.items()})
        self.handle.flush()


class ParquetWriter(RowWriter):
    """Collects rows and writes one Parquet table at the end (needs pyarrow: pip install 'emoclip[parquet]')."""

    binary = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise EmoclipError("--format parquet needs pyarrow; install it with: pip install 'emoclip[parquet]'"
                               ) from None
        self.rows: list[dict] = []

    def write(self, pred: Prediction, extra: dict | None = None) -> None:
        self.rows.append({**flat_row(pred, self.class_names, self.levels, self.generated), **self.extras(extra)})

    def finish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.rows)
        for name in self.extra_columns:  # text even when every value is null (an all-error shard)
            index = table.schema.get_field_index(name)
            if index >= 0 and pa.types.is_null(table.schema.field(index).type):
                table = table.set_column(index, name, table.column(index).cast(pa.string()))
        pq.write_table(table, self.handle)


WRITERS: dict[str, Callable[..., RowWriter]] = {
    "jsonl": JsonlWriter, "json": JsonWriter, "csv": CsvWriter, "parquet": ParquetWriter,
}
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def choose_format(fmt: str | None, output: str | Path | None) -> str:
    """The explicit format, else the output file's suffix, else JSON Lines."""
    if fmt:
        if fmt not in WRITERS:
            raise EmoclipError(f"unknown format '{fmt}'; use one of {', '.join(WRITERS)}")
        return fmt
    if output is not None and str(output) != "-":
        suffix = Path(output).suffix.lower()
        if suffix in _SUFFIX_FORMATS:
            return _SUFFIX_FORMATS[suffix]
        if suffix:  # out.xml must not silently become JSON Lines; /dev/stdout (no suffix) may
            raise EmoclipError(f"cannot tell the format of '{name_text(output)}' from '{name_text(suffix)}'; "
                               f"use a {', '.join(_SUFFIX_FORMATS)} name or give --format")
    return "jsonl"


@contextlib.contextmanager
def open_writer(fmt: str, output: str | Path | None, class_names: Sequence[str],
                levels: Mapping[str, Sequence[str]], generated: bool = False,
                extra_columns: Sequence[str] = ()) -> Iterator[RowWriter]:
    """A writer to ``output`` (atomic) or stdout; the document is completed only on success."""
    factory = WRITERS[fmt]
    if output is None or str(output) == "-":
        if getattr(factory, "binary", False):
            raise EmoclipError(f"--format {fmt} is binary; give --output FILE")
        writer = factory(sys.stdout, class_names, levels, generated, extra_columns)
        yield writer
        writer.finish()
        sys.stdout.flush()
        return
    mode = "wb" if getattr(factory, "binary", False) else "w"
    with atomic_write(output, mode, newline="" if mode == "w" else None) as handle:
        writer = factory(handle, class_names, levels, generated, extra_columns)
        yield writer
        writer.finish()
