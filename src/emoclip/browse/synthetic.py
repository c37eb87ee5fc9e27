"""A synthetic shard folder of any size, written through the real shard writer (for benchmarks and tests).

The rows have the schema ``emoclip predict --save-features --output-dir`` writes (``ShardLayout``)
and are committed with ``ShardFolder.commit``, so the folder is read exactly like a real one. The
values are made to look like a collection, not noise: features are unit vectors around a few
hundred cluster centres (uniformly random high-dimensional vectors would be a degenerate test for
an approximate index), and each row's distribution over the taxonomy leans towards its cluster's
emotion. Deterministic for a seed; paths point at files that do not exist (the page shows why).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CLUSTERS = 256


def _levels(taxonomy) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Each coarse level's names and the class→level aggregation matrix."""
    out = {}
    for level in taxonomy.ancestors():
        matrix = np.asarray(taxonomy.aggregation_matrix(level), np.float32)
        out[level.name] = (tuple(level.names), matrix)
    return out


def write_synthetic_folder(folder: str | Path, rows: int, shard_size: int = 1000, dim: int = 512, seed: int = 0,
                           taxonomy: str = "mikels8", features: bool = True, model: str = "ViT-B-32",
                           error_every: int = 0, paths: list[str] | None = None) -> Path:
    """Write ``rows`` rows as a complete shard folder at ``folder``; its path.

    ``model``: what the manifest says tagged the folder (``pretrained='random'``), so searching it
    loads that architecture's real text encoder. ``error_every``: every n-th row is an error row.
    ``paths``: the files the rows name (cycled), default made-up ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from emoclip.labels.taxonomy import load_taxonomy
    from emoclip.tagging.config import TaggerConfig
    from emoclip.tagging.shards import ORDER_COLUMN, ShardFolder, ShardLayout, ShardResult, job_options

    tax = load_taxonomy(taxonomy)
    classes = tuple(tax.names)
    levels = _levels(tax)
    layout = ShardLayout(classes, {k: v[0] for k, v in levels.items()}, (), dim if features else None)
    schema = layout.schema()
    config = TaggerConfig(model=model, pretrained="random", device="cpu", taxonomy=taxonomy)
    shards = ShardFolder(folder)
    count = -(-rows // shard_size)
    shards.prepare({"inputs": {"fingerprint": f"synthetic-{rows}-{seed}-{dim}", "count": rows},
                    "shard_size": shard_size, "shards": count, "options": job_options(config),
                    "save_features": features}, overwrite=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    leaning = rng.integers(0, len(classes), CLUSTERS)
    for index in range(count):
        n = min(shard_size, rows - index * shard_size)
        r = np.random.default_rng([seed, index])
        cluster = r.integers(0, CLUSTERS, n)
        logits = r.normal(0, 1.0, (n, len(classes))).astype(np.float32)
        logits[np.arange(n), leaning[cluster]] += r.uniform(0, 3, n).astype(np.float32)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        ids = np.arange(index * shard_size, index * shard_size + n)
        error = (ids % error_every == error_every - 1) if error_every else np.zeros(n, bool)
        top = probs.argmax(axis=1)
        order = np.argsort(-probs, axis=1)[:, :3]
        data: dict[str, object] = {
            ORDER_COLUMN: ids,
            "path": [paths[i % len(paths)] if paths else f"/synthetic/images/{i:08d}.jpg" for i in ids],
            "label": [("" if e else classes[t]) for t, e in zip(top, error, strict=True)],
            "probability": np.where(error, np.nan, probs.max(axis=1)),
            "top_k": ["" if e else "|".join(f"{classes[j]}:{probs[k, j]:.4f}" for j in order[k])
                      for k, e in enumerate(error)],
        }
        for c, name in enumerate(classes):
            data[f"p_{name}"] = np.where(error, np.nan, probs[:, c])
        for level, (names, matrix) in levels.items():
            lp = probs @ matrix   # classes × level names
            data[f"{level}_label"] = [("" if e else names[j]) for j, e in zip(lp.argmax(axis=1), error, strict=True)]
            for j, name in enumerate(names):
                data[f"{level}_p_{name}"] = np.where(error, np.nan, lp[:, j])
        data["error"] = ["cannot decode image: synthetic error" if e else "" for e in error]
        if features:
            vectors = centres[cluster] + r.normal(0, 0.6 / np.sqrt(dim), (n, dim)).astype(np.float32) * np.sqrt(dim) \
                * 0.05
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            flat = pa.array(vectors.astype(np.float32).ravel())
            offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
            column = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(error))
            data["feature"] = column
        columns = {name: data[name] for name in schema.names}
        table = pa.Table.from_pydict({k: pa.array(v, type=schema.field(k).type) if k != "feature" else v
                                      for k, v in columns.items()}, schema=schema)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        shards.commit(ShardResult(index, buffer.getvalue(), n, int(error.sum())))
    return Path(folder)
