"""Images → normalised CLIP features, in batches, with decoding in parallel and errors kept per file.

Decoding and preprocessing run in a thread pool a batch ahead of the model, so neither waits for
the other. Threads, not processes: Pillow releases the GIL while decoding and resizing (two threads
spend the same CPU time per image as one, measured on 12-megapixel JPEGs), whereas worker processes
deadlock when forked after torch has started its OpenMP threads and, spawned, would each import the
preprocessing stack (~0.8 GB with torchvision). At most ``prefetch`` batches are decoded ahead, so
memory stays bounded whatever the input size. How an image is decoded (exact or JPEG draft) comes
from the backbone's encoder spec, the same value that keys the feature cache. A file that cannot be
decoded becomes an error entry in its batch; it never stops the others.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emoclip.core.errors import ImageDecodeError
from emoclip.encoder.backbone import Backbone
from emoclip.encoder.decode import DEFAULT_MAX_PIXELS, ImageBytes, ImageSource, as_source, load_rgb

# Images per encoder call. On the CPU, 16 is as fast as 32 (the GEMMs are already large) and keeps
# peak memory lower (benchmarks/tagging.py); a GPU wants larger batches.
CPU_BATCH_SIZE = 16
CUDA_BATCH_SIZE = 64
DEFAULT_BATCH_SIZE: int | None = None  # None: chosen by device


def image_batch_size(backbone: Backbone, requested: int | None = None) -> int:
    if requested:
        return requested
    return CUDA_BATCH_SIZE if backbone.device.type == "cuda" else CPU_BATCH_SIZE


# Batches decoded (or decoding) ahead of the one being encoded. Two absorb uneven images (a 12-MP
# photo next to a thumbnail); more would only hold memory: on a CPU decoding and encoding share the
# cores, so a deeper queue cannot make either faster. Each batch of 16 is ~10 MB of pixels.
PREFETCH_BATCHES = 2


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class EncodedBatch:
    """One batch: ``features[i]`` belongs to ``paths[ok[i]]``; ``errors`` maps a path index to a reason."""

    paths: list[ImageSource]
    features: torch.Tensor
    ok: list[int]
    errors: dict[int, str] = field(default_factory=dict)


def _decode(backbone: Backbone, path: ImageSource, max_pixels: int | None, draft: int | None) -> torch.Tensor | str:
    try:
        return backbone.preprocess(load_rgb(path, max_pixels, draft, resize_to=backbone.spec.input_size))
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # one unexpected failure must not sink the batch
        return f"cannot process image: {type(exc).__name__}: {exc}"


def _batches(items: Sequence[ImageSource], size: int) -> Iterator[list[ImageSource]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def iter_encoded(backbone: Backbone, paths: Iterable[str | Path | ImageBytes],
                 batch_size: int | None = DEFAULT_BATCH_SIZE, workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, prefetch: int = PREFETCH_BATCHES
                 ) -> Iterator[EncodedBatch]:
    """Yield ``EncodedBatch``es in input order; decoding of the next batches overlaps encoding.

    Decoding follows ``backbone.spec`` (``decode``: exact, or draft for large JPEGs); at most
    ``prefetch`` batches are decoded or decoding ahead of the one being encoded.
    """
    items = [as_source(p) for p in paths]
    batch_size = image_batch_size(backbone, batch_size)
    draft = backbone.spec.draft_size
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="decode") as pool:
        pending: deque[tuple[list[ImageSource], list[Future]]] = deque()
        batches = _batches(items, batch_size)

        def submit_next() -> None:
            batch = next(batches, None)
            if batch is not None:
                pending.append((batch, [pool.submit(_decode, backbone, p, max_pixels, draft) for p in batch]))

        for _ in range(max(1, prefetch)):
            submit_next()
        while pending:
            batch, futures = pending.popleft()
            decoded = [f.result() for f in futures]
            submit_next()  # refill once this batch is decoded: never more than `prefetch` ahead
            ok = [i for i, d in enumerate(decoded) if isinstance(d, torch.Tensor)]
            errors = {i: d for i, d in enumerate(decoded) if isinstance(d, str)}
            if ok:
                features = backbone.encode_pixels(torch.stack([decoded[i] for i in ok]))
            else:
                features = torch.empty(0, backbone.feature_dim)
            yield EncodedBatch(batch, features, ok, errors)
