"""The one query implementation: filters, sorts, text and image search, charts and export.

``Query`` is plain data (what the page sends as URL parameters, what ``emoclip search`` builds
from its flags, what ``emoclip.browse.search`` takes as keywords); ``Browser.run(query)`` answers
it the same way for all three. Filtering and sorting run on the collection's in-memory columns
(``collection.py``) over the whole folder; text search ("a calm evening by the sea") and "more
like this" rank by cosine similarity through ``index.py``, with the filters applied inside the
search. The text and image encoders are the folder's own tagger (its manifest's options through
``build_tagger``), loaded on the first search only.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emoclip.browse.collection import NO_LABEL, Collection
from emoclip.browse.features import NO_FEATURES, FeatureSource
from emoclip.browse.index import (
    APPROX_MIN_ROWS,
    ExactIndex,
    FaissIndex,
    faiss_available,
    folder_key,
    sample_for_training,
)
from emoclip.core.errors import EmoclipError

log = logging.getLogger("emoclip")

SORT_SPECIAL = ("id", "probability", "margin")
HISTOGRAM_BINS = 20
EXPORT_CHUNK = 10_000
DEFAULT_TOP = 50
MAX_LIMIT = 1000
TEXT_CACHE = 32


def default_browse_cache() -> Path:
    """Beside the feature cache (same environment variables): thumbnails and indexes."""
    from emoclip.encoder.cache import default_cache_dir

    return default_cache_dir().parent / "browse"


@dataclass(frozen=True)
class Query:
    """What to show: filters, an order or a search, and which page of the answer."""

    labels: tuple[str, ...] = ()                 # the top label is one of these
    levels: dict[str, tuple[str, ...]] = field(default_factory=dict)   # e.g. {"polarity": ("negative",)}
    min_probability: float | None = None         # of the top label
    max_probability: float | None = None
    uncertain: float | None = None               # top-1 minus top-2 probability below this
    errors_only: bool = False
    sort: str | None = None                      # id | probability | margin | an emotion's name (its probability)
    ascending: bool = False
    text: str | None = None                      # text search
    like: str | int | None = None                # more like this: a row id, a row's path, or an image file
    top: int = DEFAULT_TOP                       # search: how many hits
    offset: int = 0
    limit: int = DEFAULT_TOP

    def replace(self, **changes: Any) -> Query:
        return dataclasses.replace(self, **changes)

    @property
    def is_search(self) -> bool:
        return bool(self.text) or self.like not in (None, "")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Query:
        """From URL parameters (repeatable ones as lists): the page's query string."""
        def one(name: str) -> str | None:
            value = params.get(name)
            if isinstance(value, list):
                value = value[-1] if value else None
            return value if value not in ("", None) else None

        def many(name: str) -> tuple[str, ...]:
            value = params.get(name) or []
            values = value if isinstance(value, list) else [value]
            return tuple(v for item in values for v in str(item).split(",") if v)

        def number(name: str, kind=float):
            text = one(name)
            if text is None:
                return None
            try:
                value = kind(text)
            except ValueError:
                raise EmoclipError(f"{name}={text!r} is not a number") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise EmoclipError(f"{name}={text!r} is not a finite number")
            return value

        levels = {}
        for name in params:
            if name.startswith("level."):
                levels[name[len("level."):]] = many(name)
        like = one("like")
        like_id = number("like_id", int)
        return cls(labels=many("label"), levels={k: v for k, v in levels.items() if v},
                   min_probability=number("min_probability"), max_probability=number("max_probability"),
                   uncertain=number("uncertain"), errors_only=one("errors_only") in ("1", "true", "on"),
                   sort=one("sort"), ascending=one("ascending") in ("1", "true", "on"), text=one("text"),
                   like=like_id if like_id is not None else like,
                   top=number("top", int) or DEFAULT_TOP, offset=number("offset", int) or 0,
                   limit=number("limit", int) or DEFAULT_TOP)


@dataclass
class Answer:
    """One page of a query's answer, and how many rows match in all."""

    total: int
    rows: list[dict[str, Any]]
    search: str | None            # None, "exact" or "approximate"
    positions: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray | None = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "rows": self.rows, "search": self.search}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


class Browser:
    """A shard folder opened for browsing and searching (the page, ``emoclip search`` and the API)."""

    def __init__(self, folder: str | Path, cache_dir: str | Path | None = None, tagger: Any = None,
                 device: str | None = None, approx_min_rows: int = APPROX_MIN_ROWS) -> None:
        self.collection = Collection(folder)
        self.folder = self.collection.folder
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_browse_cache()
        self.key = folder_key(self.folder, self.collection.state.manifest)
        self.entry_dir = self.cache_dir / self.key
        self._tagger = tagger
        self.device = device
        self.approx_min_rows = approx_min_rows
        layout = self.collection.layout
        self.features = FeatureSource(self.collection.state.shard_size,
                                      bool(layout and layout.has_features) or self.collection.state.save_features,
                                      self.entry_dir)
        self._index: ExactIndex | FaissIndex | None = None
        self.lock = threading.RLock()
        self._texts: dict[str, np.ndarray] = {}
        self.features_job: dict[str, Any] = {"running": False, "done": 0, "total": 0, "error": None}

    # -- the folder ------------------------------------------------------------------------------
    @property
    def layout(self):
        return self.collection.layout

    def refresh(self) -> bool:
        """Take in shards committed since the last look (each query calls it)."""
        with self.lock:
            return self.collection.refresh_if_changed()

    def describe(self) -> dict[str, Any]:
        state = self.collection.state
        layout = self.layout
        return {"folder": str(self.folder), "rows": len(self.collection), "shards": len(state.shards),
                "total_shards": state.total_shards, "complete": state.complete, "classes": list(layout.classes),
                "levels": {k: list(v) for k, v in layout.levels.items()},
                "searchable": self.features.available(list(state.shards)),
                "index": None if self._index is None else self._index.kind, "problems": list(state.problems),
                "features_job": dict(self.features_job)}

    def compute_features(self, progress: bool | None = None) -> int:
        """Encode the listed files of a folder tagged without --save-features (``features_job`` follows it)."""
        job = self.features_job
        job.update(running=True, done=0, error=None)
        try:
            def report(done: int, total: int) -> None:
                job.update(done=done, total=total)
            return self.features.compute(self.collection, self.tagger(), progress, report)
        except EmoclipError as exc:
            job["error"] = str(exc)
            raise
        finally:
            job["running"] = False

    def start_computing_features(self) -> dict[str, Any]:
        """The page's button: compute in a background thread (once at a time); the job's state."""
        with self.lock:
            if not self.features_job["running"] and not self.features.available(list(self.collection.state.shards)):
                self.features_job["running"] = True

                def work() -> None:
                    try:
                        self.compute_features(progress=False)
                    except Exception:   # recorded in features_job and shown by the page
                        log.exception("browse: computing features failed")
                threading.Thread(target=work, name="emoclip-features", daemon=True).start()
            return dict(self.features_job)

    # -- filters and order ---------------------------------------------------------------------------
    def _class_code(self, name: str, names: tuple[str, ...], what: str) -> int:
        if name not in names:
            raise EmoclipError(f"unknown {what} '{name}'; this folder's are: {', '.join(names)}")
        return names.index(name)

    def mask(self, query: Query) -> np.ndarray:
        """The rows that pass the query's filters (array positions)."""
        rows = self.collection.rows
        keep = np.ones(len(rows), bool)
        if query.labels:
            codes = [self._class_code(n, self.layout.classes, "label") for n in query.labels]
            keep &= np.isin(rows.label, codes)
        for level, values in query.levels.items():
            if level not in self.layout.levels:
                raise EmoclipError(f"unknown level '{level}'; this folder's are: "
                                   f"{', '.join(self.layout.levels) or 'none'}")
            codes = [self._class_code(v, self.layout.levels[level], f"{level} label") for v in values]
            keep &= np.isin(rows.level_label[level], codes)
        with np.errstate(invalid="ignore"):
            if query.min_probability is not None:
                keep &= rows.probability >= query.min_probability
            if query.max_probability is not None:
                keep &= rows.probability <= query.max_probability
            if query.uncertain is not None:
                keep &= self.margins() < query.uncertain
        if query.errors_only:
            keep &= rows.error
        return keep

    def margins(self) -> np.ndarray:
        return self.collection.rows.margin

    def sort_key(self, sort: str) -> np.ndarray:
        rows = self.collection.rows
        if sort == "id":
            return rows.ids.astype(np.float64)
        if sort == "probability":
            return rows.probability
        if sort == "margin":
            return self.margins()
        if sort in self.layout.classes:
            return rows.probs[:, self.layout.classes.index(sort)]
        for level, names in self.layout.levels.items():
            if sort in names:
                return rows.level_probs[level][:, names.index(sort)]
        choices = [*SORT_SPECIAL, *self.layout.classes, *(n for v in self.layout.levels.values() for n in v)]
        raise EmoclipError(f"cannot sort by '{sort}'; use one of: {', '.join(choices)}")

    def order(self, keep: np.ndarray, query: Query, stop: int | None) -> np.ndarray:
        """Positions of the kept rows in the query's order (only the first ``stop`` when given)."""
        chosen = np.flatnonzero(keep)
        if not query.sort or query.sort == "id":
            return chosen[::-1] if query.sort == "id" and not query.ascending else chosen
        key = self.sort_key(query.sort)[chosen].astype(np.float64)
        key = key if query.ascending else -key
        key = np.where(np.isnan(key), np.inf, key)      # rows without the value last, whichever the direction
        if stop is not None and stop < len(chosen) // 4:
            part = np.argpartition(key, stop - 1)[:stop]
            chosen, key = chosen[part], key[part]
        return chosen[np.lexsort((chosen, key))][:stop]

    # -- search ----------------------------------------------------------------------------------
    def tagger(self):
        """The folder's own tagger (its job's options), loaded once, on the first search."""
        if self._tagger is None:
            from emoclip.tagging.config import TaggerConfig, build_tagger

            config = TaggerConfig.from_dict(self.collection.state.options)
            if self.device:
                config = config.replace(device=self.device)
            self._tagger = build_tagger(config)
            recorded = self.collection.state.manifest.get("encoder")
            if recorded and json.loads(json.dumps(self._tagger.backbone.identity())) != recorded:
                log.warning("browse: this machine's encoder (%s) differs from the one that tagged the folder (%s); "
                            "images encoded here for 'more like this' may score slightly differently",
                            self._tagger.backbone.identity(), recorded)
        return self._tagger

    def index(self) -> ExactIndex | FaissIndex:
        """The search index over the committed shards, built or extended to cover them all."""
        with self.lock:
            shards = list(self.collection.state.shards)
            if not self.features.available(shards):
                raise EmoclipError(NO_FEATURES)
            rows = len(self.collection)
            approximate = rows >= self.approx_min_rows and faiss_available()
            if rows >= self.approx_min_rows and not faiss_available():
                log.warning("browse: %d rows and faiss is not installed: exact search holds every feature in "
                            "memory; pip install 'emoclip[browse]' for the approximate index", rows)
            index = self._index
            if index is not None and (index.kind == "approximate") != approximate:
                index = None   # the folder grew past the threshold: build the approximate one
            paths = dict(shards)
            if index is None:
                index = self._new_index(shards, approximate)
            new = [(i, p) for i, p in shards if i not in index.shards]
            if new:
                if isinstance(index, FaissIndex):
                    index.add(self.features.batches(new), paths)   # saved, then memory-mapped
                else:
                    index.add(self.features.batches(new))
            self._index = index
            return index

    def _dim(self, shards) -> int:
        for index, path in shards:
            _, ids, vectors = self.features.read(index, path)
            if len(ids):
                return vectors.shape[1]
        raise EmoclipError("no row of this folder has a feature (every row is an error); nothing to search")

    def _new_index(self, shards, approximate: bool) -> ExactIndex | FaissIndex:
        dim = self._dim(shards)
        if not approximate:
            return ExactIndex(dim)
        index = FaissIndex(dim, self.key, self.cache_dir)
        if index.load(dict(shards)):
            return index
        index.stamps = {}
        log.info("browse: building the approximate index over %d rows", len(self.collection))
        sample = sample_for_training(lambda chosen: self.features.batches([(i, dict(shards)[i]) for i in chosen]),
                                     [i for i, _ in shards], 256 * 40)
        index.train(sample, len(self.collection))
        return index

    def text_vector(self, text: str) -> np.ndarray:
        """The text's CLIP feature; the last few are kept, as the page sends the same text with every
        page turn and filter change."""
        cached = self._texts.get(text)
        if cached is None:
            cached = self.tagger().backbone.encode_texts([text])[0].numpy()
            self._texts[text] = cached
            while len(self._texts) > TEXT_CACHE:
                self._texts.pop(next(iter(self._texts)))
        return cached

    def like_vector(self, like: str | int) -> tuple[np.ndarray, int | None]:
        """The feature to search by, and the global id of the row it is (None: an outside image)."""
        from emoclip.core.files import name_from_text, name_text

        if isinstance(like, (int, np.integer)):
            row_id = int(like)
        else:
            pos = self.collection.find_path(str(like))
            if pos is None:
                pos = self.collection.find_path(name_text(str(Path(name_from_text(str(like))).expanduser()
                                                              .resolve())))
            if pos is None:
                path = Path(name_from_text(str(like))).expanduser()
                if not path.is_file():
                    raise EmoclipError(f"'{like}' is neither a row of '{self.folder}' nor an image file; give a "
                                       "path the folder lists, a row id, or an image to compare with")
                pred = next(iter(self.tagger().tag([path], features=True)))
                if pred.feature is None:
                    raise EmoclipError(f"cannot read '{like}' to compare with: {pred.error}")
                return np.asarray(pred.feature, np.float32), None
            row_id = int(self.collection.rows.ids[pos])
        shard_path, _ = self.collection.shard_of(row_id)
        _, ids, vectors = self.features.read(row_id // self.collection.state.shard_size, shard_path)
        hit = np.flatnonzero(ids == row_id)
        if not len(hit):
            raise EmoclipError(f"row {row_id} has no feature (it could not be tagged); choose another image")
        return vectors[hit[0]], row_id

    # -- answering -------------------------------------------------------------------------------
    def run(self, query: Query) -> Answer:
        """The page of rows ``query`` asks for (filters over the whole folder, then order or search)."""
        if query.limit < 0 or query.offset < 0 or query.top < 1:
            raise EmoclipError("offset and limit must be ≥ 0, and top ≥ 1")
        limit = min(query.limit, MAX_LIMIT)
        self.refresh()
        with self.lock:
            keep = self.mask(query)
            if query.is_search:
                positions, scores, kind = self.search(query, keep)
            else:
                positions = self.order(keep, query, query.offset + limit)
                scores, kind = None, None
            total = len(positions) if query.is_search else int(keep.sum())
            page = positions[query.offset:query.offset + limit]
            page_scores = None if scores is None else scores[query.offset:query.offset + limit]
            return Answer(total, self.records(page, page_scores), kind, positions, scores)

    def search(self, query: Query, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        if query.text and query.like not in (None, ""):
            raise EmoclipError("give a text or an image to search by, not both")
        index = self.index()
        rows = self.collection.rows
        exclude = None
        if query.text:
            vector = self.text_vector(query.text)
        else:
            assert query.like is not None  # a search has text or an image to be like
            vector, exclude = self.like_vector(query.like)
        if vector.shape[-1] != index.dim:
            raise EmoclipError(f"the folder's features are {index.dim}-d but this model gives {vector.shape[-1]}-d; "
                               "search with the model that tagged the folder")
        allowed = np.zeros(int(rows.ids[-1]) + 1 if len(rows) else 0, bool)
        allowed[rows.ids[keep]] = True
        if exclude is not None and exclude < len(allowed):
            allowed[exclude] = False     # more like this: not the image itself
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        ids, scores = index.search(vector, query.top, allowed)
        known = np.isin(ids, rows.ids)    # a row whose shard was recomputed away: not shown
        return self.collection.positions(ids[known]), scores[known].astype(np.float64), index.kind

    def records(self, positions: np.ndarray, scores: np.ndarray | None = None) -> list[dict[str, Any]]:
        """The grid's rows: id, path, top label and probability, each level's, error, and score."""
        rows = self.collection.rows
        layout = self.layout
        out = []
        for n, pos in enumerate(np.asarray(positions, np.int64)):
            code = int(rows.label[pos])
            record: dict[str, Any] = {"id": int(rows.ids[pos]), "path": rows.paths[int(pos)].as_py(),
                                      "label": layout.classes[code] if code != NO_LABEL else None,
                                      "probability": _finite(rows.probability[pos])}
            for level, names in layout.levels.items():
                lc = int(rows.level_label[level][pos])
                record[level] = {"label": names[lc] if lc != NO_LABEL else None,
                                 "probability": _finite(rows.level_probs[level][pos, lc]) if lc != NO_LABEL else None}
            record["error"] = rows.errors[int(pos)].as_py() or None
            if scores is not None:
                record["score"] = _finite(scores[n])
            out.append(record)
        return out

    def detail(self, row_id: int) -> dict[str, Any]:
        """One row in full: the distribution, each level's, ``multi``, the error, and whether its file is there."""
        from emoclip.core.files import name_from_text

        self.refresh()
        with self.lock:
            pos = self.collection.position(row_id)
            full = self.collection.full_row(row_id)
            layout = self.layout
        record = self.records(np.asarray([pos]))[0]
        record["distribution"] = {c: _finite(full.get(f"p_{c}")) for c in layout.classes}
        record["levels"] = {lv: {c: _finite(full.get(f"{lv}_p_{c}")) for c in names}
                            for lv, names in layout.levels.items()}
        record["multi"] = [{"label": lbl, "probability": float(p)} for lbl, _, p in
                           (part.rpartition(":") for part in (full.get("multi") or "").split("|") if part)]
        record["top_k"] = full.get("top_k") or ""
        record["generated"] = full.get("generated")
        path = Path(name_from_text(record["path"]))
        record["file"] = "present" if path.is_file() else f"missing: {path} is no longer there (moved or deleted)"
        return record

    # -- charts ------------------------------------------------------------------------------------
    def stats(self, query: Query) -> dict[str, Any]:
        """Over the filtered rows: the emotion mix, each level's split, and probability histograms."""
        self.refresh()
        with self.lock:
            keep = self.mask(query.replace(text=None, like=None))
            rows = self.collection.rows
            layout = self.layout
            labels = rows.label[keep]
            counts = np.bincount(labels[labels != NO_LABEL], minlength=len(layout.classes))
            levels = {}
            for level, names in layout.levels.items():
                codes = rows.level_label[level][keep]
                lc = np.bincount(codes[codes != NO_LABEL], minlength=len(names))
                levels[level] = {n: int(c) for n, c in zip(names, lc, strict=True)}
            edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
            histograms = {"probability": np.histogram(rows.probability[keep][np.isfinite(rows.probability[keep])],
                                                      edges)[0].tolist()}
            if query.sort is not None and query.sort in layout.classes:
                values = rows.probs[keep, layout.classes.index(query.sort)]
                histograms[query.sort] = np.histogram(values[np.isfinite(values)], edges)[0].tolist()
            return {"rows": int(keep.sum()), "errors": int(rows.error[keep].sum()),
                    "labels": {n: int(c) for n, c in zip(layout.classes, counts, strict=True)}, "levels": levels,
                    "edges": [round(float(e), 4) for e in edges], "histograms": histograms}

    # -- export ------------------------------------------------------------------------------------
    def export_columns(self, search: bool) -> list[str]:
        layout = self.layout
        cols = ["id", "path", "label", "probability"]
        for level in layout.levels:
            cols += [f"{level}_label", f"{level}_probability"]
        cols += [f"p_{c}" for c in layout.classes] + ["error"]
        return cols + (["score"] if search else [])

    def export_rows(self, query: Query, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Every row of the selection (not only a page; the first ``limit``), flat, in the query's order."""
        self.refresh()
        with self.lock:
            keep = self.mask(query)
            if query.is_search:
                positions, scores, _ = self.search(query, keep)
            else:
                positions, scores = self.order(keep, query, limit), None
            positions = positions[:limit]
            scores = None if scores is None else scores[:limit]
            rows = self.collection.rows
            layout = self.layout
        for start in range(0, len(positions), EXPORT_CHUNK):
            chunk = positions[start:start + EXPORT_CHUNK]
            part = None if scores is None else scores[start:start + EXPORT_CHUNK]
            probs = rows.probs[chunk]
            for n, record in enumerate(self.records(chunk, part)):
                flat = {k: v for k, v in record.items() if k not in layout.levels and k != "score"}
                for level in layout.levels:
                    flat[f"{level}_label"] = record[level]["label"]
                    flat[f"{level}_probability"] = record[level]["probability"]
                flat.update({f"p_{c}": _finite(probs[n, i]) for i, c in enumerate(layout.classes)})
                flat["error"] = record["error"]
                if scores is not None:
                    flat["score"] = record["score"]
                yield flat

    def export(self, query: Query, fmt: str, limit: int | None = None) -> Iterator[str]:
        """The selection as CSV, JSON or JSON Lines text, in pieces (a million rows never sit in memory as text)."""
        if fmt not in EXPORT_FORMATS:
            raise EmoclipError(f"cannot export as '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
        return EXPORT_FORMATS[fmt](self, query, limit)


def _export_csv(browser: Browser, query: Query, limit: int | None) -> Iterator[str]:
    from emoclip.core.files import name_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=browser.export_columns(query.is_search), lineterminator="\n")
    writer.writeheader()
    for n, row in enumerate(browser.export_rows(query, limit), 1):
        row["path"] = name_text(row["path"])
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        if n % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _export_json(browser: Browser, query: Query, limit: int | None) -> Iterator[str]:
    yield "["
    for n, row in enumerate(browser.export_rows(query, limit)):
        yield ("," if n else "") + "\n  " + json.dumps(row, ensure_ascii=False, allow_nan=False)
    yield "\n]\n"


def _export_jsonl(browser: Browser, query: Query, limit: int | None) -> Iterator[str]:
    for row in browser.export_rows(query, limit):
        yield json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"


EXPORT_FORMATS = {"csv": _export_csv, "json": _export_json, "jsonl": _export_jsonl}


def search(folder: str | Path, text: str | None = None, *, like: str | int | None = None,
           labels: tuple[str, ...] | list[str] | str = (), polarity: str | tuple[str, ...] | None = None,
           top: int = DEFAULT_TOP, cache_dir: str | Path | None = None, browser: Browser | None = None,
           **filters: Any) -> list[dict[str, Any]]:
    """Rows of a shard folder, as ``emoclip search`` and the page give them.

    ``text`` (or ``like``: a row id, a row's path or an image file) ranks by similarity; otherwise
    ``sort`` orders (``"awe"``: most awe first). Filters: ``labels``, ``polarity``, ``levels``,
    ``min_probability``, ``max_probability``, ``uncertain``, ``errors_only``. Returns at most
    ``top`` row dicts (id, path, label, probability, each level, error, and score when searching).
    ``browser``: an open ``Browser`` to reuse (it keeps the columns, index and model loaded).
    """
    levels = dict(filters.pop("levels", {}) or {})
    if polarity:
        levels["polarity"] = (polarity,) if isinstance(polarity, str) else tuple(polarity)
    query = Query(labels=(labels,) if isinstance(labels, str) else tuple(labels), levels=levels, text=text,
                  like=like, top=top, limit=top, **filters)
    browser = browser or Browser(folder, cache_dir)
    return browser.run(query).rows
