"""Browsing a 1,000,000-row shard folder: page, filter and text-search latency, and peak memory.

Builds (once, in a child process, cached in the temp folder) a synthetic complete shard folder of
``--rows`` rows with ``--dim``-d saved features through the real shard writer
(``emoclip.browse.synthetic``), then, in this fresh process, opens it with ``Browser`` (the page's,
the CLI's and the API's one query implementation; the approximate index is built, or found saved, by
a child process first, so this one maps the saved index as every later opening does) and times:

* page: one grid page (48 rows) of a filtered, sorted selection — a label, a probability floor,
  most-<emotion> first, at a random page among the first ten;
* filter: what the page asks on each filter change besides the grid — the charts (emotion mix,
  polarity split, probability histogram) over polarity + uncertainty + probability filters;
* search: a text search combined with a label filter (the folder's model, ViT-B-32 with random
  weights: the real text-encoder cost; the approximate index once built and saved).

    python benchmarks/browse.py                       # 1M rows, 512-d
    python benchmarks/browse.py --rows 100000         # quicker
    python benchmarks/browse.py --compare 200000      # the index choice: exact vs faiss IVF-SQ8 / IVF-PQ / HNSW

The last line: rows=N open_s=… index_s=… page_p95_ms=… filter_p95_ms=… search_p95_ms=… peak_rss_mb=… cpu=KIND
(targets: page < 500 ms, search < 1000 ms, RSS < 2048 MB). With --compare, one line per index and
the last line names the measured figures of each.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHRASES = ["a calm evening by the sea", "a crowd cheering at a concert", "a dark stormy street", "a child laughing",
           "an abandoned house", "a mountain at sunrise", "a funeral", "a plate of rotten food"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def p95(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values) * 1000, 95))


def folder_for(rows: int, dim: int, shard_size: int, model: str) -> Path:
    """The cached synthetic folder, built in a child process the first time."""
    folder = Path(tempfile.gettempdir()) / f"emoclip-bench-browse-{rows}-{dim}-{shard_size}-{model}"
    from emoclip.browse.folder import read_manifest
    from emoclip.core.errors import EmoclipError

    try:
        if read_manifest(folder).get("complete"):
            return folder
    except EmoclipError:
        pass
    print(f"building {rows:,} synthetic rows in {folder} (once)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--build", str(folder), "--rows", str(rows), "--dim", str(dim),
                    "--shard-size", str(shard_size), "--model", model], check=True)
    print(f"built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return folder


def run(args: argparse.Namespace) -> None:
    from emoclip.browse.query import Browser, Query
    from emoclip.core.hardware import cpu_info

    folder = folder_for(args.rows, args.dim, args.shard_size, args.model)
    cache = Path(str(folder) + "-cache")
    # The index is built (or found saved) in a child process, as a first `emoclip browse` would build
    # it; this process then opens the folder as any later one does: the saved index memory-mapped.
    subprocess.run([sys.executable, __file__, "--build-index", str(folder)], check=True)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    browser = Browser(folder, cache)
    open_s = time.perf_counter() - started
    started = time.perf_counter()
    index = browser.index()
    index_s = time.perf_counter() - started
    classes = browser.layout.classes
    browser.text_vector("warm up")     # the model loads once, on the first search
    page, filt, search, encode = [], [], [], []
    for n in range(args.queries):
        label, emotion = classes[n % len(classes)], classes[(n * 3 + 1) % len(classes)]
        query = Query(labels=(label,), min_probability=0.3, sort=emotion, offset=48 * int(rng.integers(0, 10)),
                      limit=48)
        t = time.perf_counter()
        answer = browser.run(query)
        page.append(time.perf_counter() - t)
        assert answer.total > 0 and len(answer.rows) > 0, "a benchmark query matched nothing"
        chart = Query(levels={"polarity": ("negative" if n % 2 else "positive",)}, uncertain=0.2 + 0.02 * (n % 5),
                      max_probability=0.9)
        t = time.perf_counter()
        browser.stats(chart)
        filt.append(time.perf_counter() - t)
        text = f"{PHRASES[n % len(PHRASES)]}, photo {n}"      # a new text each time: never a cached vector
        t = time.perf_counter()
        browser.text_vector(text)        # the text encoder (its vector is kept for the query that follows)
        encoded = time.perf_counter()
        hits = browser.run(Query(text=text, labels=(label,), top=200, limit=48))
        search.append(time.perf_counter() - t)
        encode.append(encoded - t)
        assert hits.rows and all(r["label"] == label for r in hits.rows)
    index_only = [s - e for s, e in zip(search, encode, strict=True)]
    print(f"index={index.kind} rows_indexed={len(index)} queries={args.queries} text_encode_p95_ms={p95(encode):.0f} "
          f"search_without_encoding_p95_ms={p95(index_only):.0f}", file=sys.stderr)
    print(f"rows={len(browser.collection)} open_s={open_s:.1f} index_s={index_s:.1f} page_p95_ms={p95(page):.0f} "
          f"filter_p95_ms={p95(filt):.0f} search_p95_ms={p95(search):.0f} peak_rss_mb={peak_rss_mb():.0f} "
          f"cpu={cpu_info().model.replace(' ', '_')}")


def compare(args: argparse.Namespace) -> None:
    """Exact search against faiss candidates on the same folder: build time, size, query time, recall@10."""
    import faiss

    from emoclip.browse.features import FeatureSource
    from emoclip.browse.folder import read_folder
    from emoclip.browse.index import top_k
    from emoclip.core.hardware import cpu_info

    folder = folder_for(args.compare, args.dim, args.shard_size, args.model)
    state = read_folder(folder)
    source = FeatureSource(state.shard_size, True, Path(tempfile.gettempdir()))
    ids, vectors = [], []
    for _, i, v in source.batches(list(state.shards)):
        ids.append(i)
        vectors.append(v)
    ids, matrix = np.concatenate(ids), np.concatenate(vectors)
    rng = np.random.default_rng(1)
    queries = matrix[rng.choice(len(matrix), 50, replace=False)] + rng.normal(0, 0.02, (50, matrix.shape[1]))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    allowed = rng.random(len(matrix)) < 0.1     # a filter keeping 10 % of the rows
    truth = [set(top_k(matrix @ q, 10)) for q in queries]
    truth_f = [set(top_k(np.where(allowed, matrix @ q, -np.inf), 10)) for q in queries]
    nlist = int(np.sqrt(len(matrix)))
    summary = []
    candidates = (("exact", None, 0), ("ivf-sq8", f"IVF{nlist},SQ8", 16), ("ivf-sq4", f"IVF{nlist},SQ4", 16),
                  ("ivf-pq64", f"IVF{nlist},PQ64", 16), ("hnsw32", "HNSW32", 0), ("ivf-pq128", f"IVF{nlist},PQ128", 16))
    for name, factory, nprobe in (c for c in candidates if c[0] in args.candidates.split(",")):
        t = time.perf_counter()
        if factory is None:
            size = matrix.nbytes
            search = lambda q, sel=None: top_k(np.where(sel, matrix @ q, -np.inf) if sel is not None  # noqa: E731
                                               else matrix @ q, 10)
        else:
            index = faiss.index_factory(matrix.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            index.train(matrix[rng.choice(len(matrix), min(len(matrix), 40 * nlist), replace=False)])
            index.add(matrix)
            size = len(faiss.serialize_index(index))

            def search(q, sel=None, index=index, nprobe=nprobe):
                params = None
                if sel is not None:
                    bits = np.packbits(sel.astype(np.uint8), bitorder="little")
                    selector = faiss.IDSelectorBitmap(len(sel), faiss.swig_ptr(bits))
                    params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe) if nprobe else \
                        faiss.SearchParametersHNSW(sel=selector)
                elif nprobe:
                    params = faiss.SearchParametersIVF(nprobe=nprobe)
                return index.search(q.reshape(1, -1), 10, params=params)[1][0]
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        got = [set(search(q)) for q in queries]
        query_ms = (time.perf_counter() - t) / len(queries) * 1000
        got_f = [set(search(q, allowed)) for q in queries]
        recall = np.mean([len(a & b) / 10 for a, b in zip(got, truth, strict=True)])
        recall_f = np.mean([len(a & b) / 10 for a, b in zip(got_f, truth_f, strict=True)])
        line = (f"{name}: build_s={build_s:.1f} bytes_per_row={size / len(matrix):.0f} query_ms={query_ms:.2f} "
                f"recall10={recall:.3f} filtered_recall10={recall_f:.3f}")
        print(line, flush=True)
        summary.append(line.replace(": ", ":").replace(" ", ","))
    print(f"rows={len(matrix)} " + " ".join(summary) + f" cpu={cpu_info().model.replace(' ', '_')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--model", default="ViT-B-32", help="The model the folder says tagged it (random weights).")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--compare", type=int, default=0, metavar="ROWS", help="Compare index kinds on ROWS rows.")
    parser.add_argument("--candidates", default="exact,ivf-sq8,ivf-sq4,ivf-pq64,hnsw32,ivf-pq128",
                        help="With --compare: which indexes (comma-separated).")
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build-index", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_index:
        from emoclip.browse.query import Browser

        started = time.perf_counter()
        index = Browser(args.build_index, Path(args.build_index + "-cache")).index()
        print(f"index: {index.kind}, {len(index):,} rows, ready in {time.perf_counter() - started:.0f} s "
              f"(building it, or loading the saved one), peak_rss_mb={peak_rss_mb():.0f}", file=sys.stderr)
        return
    if args.build:
        from emoclip.browse.synthetic import write_synthetic_folder

        write_synthetic_folder(args.build, args.rows, args.shard_size, args.dim, model=args.model, error_every=997)
        return
    compare(args) if args.compare else run(args)


if __name__ == "__main__":
    main()
