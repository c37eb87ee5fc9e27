"""Images → normalised CLIP features, in batches, with decoding in parallel and errors kept per file.

Decoding and preprocessing run in a thread pool (Pillow releases the GIL while decoding and
resizing) a batch ahead of the model, so the encoder rarely waits. A file that cannot be decoded
becomes an error entry in its batch; it never stops the others.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbone import Backbone
from ..errors import ImageDecodeError
from .images import DEFAULT_MAX_PIXELS, ImageBytes, ImageSource, as_source, load_rgb

# Images per encoder call. On the CPU, 16 is as fast as 32 (the GEMMs are already large) and keeps
# peak memory lower (benchmarks/tagging.py); a GPU wants larger batches.
CPU_BATCH_SIZE = 16
CUDA_BATCH_SIZE = 64
DEFAULT_BATCH_SIZE: int | None = None  # None: chosen by device


def image_batch_size(backbone: Backbone, requested: int | None = None) -> int:
    if requested:
        return requested
    return CUDA_BATCH_SIZE if backbone.device.type == "cuda" else CPU_BATCH_SIZE


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class EncodedBatch:
    """One batch: ``features[i]`` belongs to ``paths[ok[i]]``; ``errors`` maps a path index to a reason."""

    paths: list[ImageSource]
    features: torch.Tensor
    ok: list[int]
    errors: dict[int, str] = field(default_factory=dict)


def draft_size(backbone: Backbone) -> int:
    """The smallest side a draft-decoded JPEG may have: the model's input size."""
    size = backbone.preprocess_config.get("size", 224)
    return int(max(size) if isinstance(size, list | tuple) else size)


def _decode(backbone: Backbone, path: ImageSource, max_pixels: int | None, draft: int | None) -> torch.Tensor | str:
    try:
        return backbone.preprocess(load_rgb(path, max_pixels, draft, resize_to=draft_size(backbone)))
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # one unexpected failure must not sink the batch
        return f"cannot process image: {type(exc).__name__}: {exc}"


def _batches(items: Sequence[ImageSource], size: int) -> Iterator[list[ImageSource]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def iter_encoded(backbone: Backbone, paths: Iterable[str | Path | ImageBytes],
                 batch_size: int | None = DEFAULT_BATCH_SIZE, workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 fast_decode: bool = False) -> Iterator[EncodedBatch]:
    """Yield ``EncodedBatch``es in input order; decoding of the next batch overlaps encoding."""
    items = [as_source(p) for p in paths]
    batch_size = image_batch_size(backbone, batch_size)
    draft = draft_size(backbone) if fast_decode else None
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="decode") as pool:
        pending: deque[tuple[list[ImageSource], list[Future]]] = deque()
        batches = _batches(items, batch_size)

        def submit_next() -> None:
            batch = next(batches, None)
            if batch is not None:
                pending.append((batch, [pool.submit(_decode, backbone, p, max_pixels, draft) for p in batch]))

        submit_next()
        submit_next()
        while pending:
            batch, futures = pending.popleft()
            submit_next()
            decoded = [f.result() for f in futures]
            ok = [i for i, d in enumerate(decoded) if isinstance(d, torch.Tensor)]
            errors = {i: d for i, d in enumerate(decoded) if isinstance(d, str)}
            if ok:
                features = backbone.encode_pixels(torch.stack([decoded[i] for i in ok]))
            else:
                features = torch.empty(0, backbone.feature_dim)
            yield EncodedBatch(batch, features, ok, errors)
