"""Images → normalised CLIP features, in batches, with decoding in parallel and errors kept per file.

Decoding and the picture half of preprocessing (resize, crop: preprocess.py) run in a thread pool
ahead of the model, so neither waits for the other; the arithmetic half runs per batch where it is
encoded. The encoder runs in the lanes × threads layout measured fastest on this machine
(layout.py): on 2 cores, two single-threaded lanes encoding two batches at once beat one lane with
both threads by ~1.4x. Batches still come out in input order. Threads, not processes: Pillow
releases the GIL while decoding and resizing (two threads spend the same CPU time per image as one,
measured on 12-megapixel JPEGs), whereas worker processes
deadlock when forked after torch has started its OpenMP threads and, spawned, would each import the
preprocessing stack (~0.8 GB with torchvision). At most ``prefetch`` batches are decoded ahead, so
memory stays bounded whatever the input size. How an image is decoded (exact or JPEG draft) comes
from the backbone's encoder spec, the same value that keys the feature cache. A file that cannot be
decoded becomes an error entry in its batch; it never stops the others.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from emoclip.core.errors import ImageDecodeError
from emoclip.encoder.backbone import Backbone
from emoclip.encoder.decode import DEFAULT_MAX_PIXELS, ImageBytes, ImageSource, as_source, load_rgb
from emoclip.encoder.layout import Layout, encoder_layout, lane_pool, single_lane
from emoclip.encoder.preprocess import SplitPreprocess, split_preprocess

# Images per encoder call. On the CPU, 16 is as fast as 32 (the GEMMs are already large) and keeps
# peak memory lower (benchmarks/tagging.py); a GPU wants larger batches.
CPU_BATCH_SIZE = 16
CUDA_BATCH_SIZE = 64
DEFAULT_BATCH_SIZE: int | None = None  # None: chosen by device


def image_batch_size(backbone: Backbone, requested: int | None = None) -> int:
    if requested:
        return requested
    return CUDA_BATCH_SIZE if backbone.device.type == "cuda" else CPU_BATCH_SIZE


# Batches decoded (or decoding) ahead of the ones being encoded. Two absorb uneven images (a 12-MP
# photo next to a thumbnail); more would only hold memory: on a CPU decoding and encoding share the
# cores, so a deeper queue cannot make either faster. Each batch of 16 is ~2.4 MB of uint8 pixels.
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


Decoded = np.ndarray | torch.Tensor  # uint8 pixels for a split preprocess, else the transform's tensor


def _decode(backbone: Backbone, split: SplitPreprocess | None, path: ImageSource, max_pixels: int | None,
            draft: int | None) -> Decoded | str:
    """One image, decoded and preprocessed as far as a decoding thread should (preprocess.py)."""
    try:
        image = load_rgb(path, max_pixels, draft, resize_to=backbone.spec.input_size)
        return split.pixels(image) if split is not None else backbone.preprocess(image)
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # one unexpected failure must not sink the batch
        return f"cannot process image: {type(exc).__name__}: {exc}"


def _batches(items: Sequence[ImageSource], size: int) -> Iterator[list[ImageSource]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def iter_encoded(backbone: Backbone, paths: Iterable[str | Path | ImageBytes],
                 batch_size: int | None = DEFAULT_BATCH_SIZE, workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, prefetch: int = PREFETCH_BATCHES,
                 layout: Layout | None = None) -> Iterator[EncodedBatch]:
    """Yield ``EncodedBatch``es in input order; decoding of the next batches overlaps encoding.

    Decoding follows ``backbone.spec`` (``decode``: exact, or draft for large JPEGs). The encoder
    runs in the layout measured fastest here (layout.py: lanes × threads; ``layout`` overrides it):
    one lane encodes in this thread, more lanes encode that many batches at once. At most
    ``prefetch`` batches beyond the ones being encoded are decoded or decoding ahead.
    """
    items = [as_source(p) for p in paths]
    batch_size = image_batch_size(backbone, batch_size)
    batches = list(_batches(items, batch_size))
    if layout is None:  # one batch (a service request) gains nothing from lanes: every thread on it
        layout = encoder_layout(backbone, batch_size) if len(batches) > 1 else single_lane()
    encoder = backbone.for_layout(layout)
    lanes = lane_pool(layout) if layout.lanes > 1 else None
    draft = backbone.spec.draft_size
    split = split_preprocess(backbone.preprocess)

    def encode(batch: list[ImageSource], decoded: list[Decoded | str]) -> EncodedBatch:
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        errors = {i: d for i, d in enumerate(decoded) if isinstance(d, str)}
        if ok:
            good = [cast(Decoded, decoded[i]) for i in ok]
            pixels = split.batch(good) if split is not None else torch.stack(good)  # type: ignore[arg-type]
            features = encoder.encode_pixels(pixels)
        else:
            features = torch.empty(0, backbone.feature_dim)
        return EncodedBatch(batch, features, ok, errors)

    def decode_and_encode(batch: list[ImageSource], futures: list[Future] | None) -> EncodedBatch:
        if futures is None:  # in the lane itself
            return encode(batch, [_decode(backbone, split, p, max_pixels, draft) for p in batch])
        return encode(batch, [f.result() for f in futures])

    # Several lanes decode their own batches (measured fastest: no decoding threads beside the lanes
    # competing for the cores) unless decoding threads were asked for; one lane decodes in a pool.
    in_lane = lanes is not None and workers is None
    with contextlib.ExitStack() as stack:
        pool = None if in_lane else stack.enter_context(
            ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="decode"))
        pending: deque[tuple[list[ImageSource], list[Future] | None, Future | None]] = deque()
        upcoming = iter(batches)

        def submit_next() -> None:
            batch = next(upcoming, None)
            if batch is None:
                return
            futures = None if pool is None else [pool.submit(_decode, backbone, split, p, max_pixels, draft)
                                                 for p in batch]
            pending.append((batch, futures, lanes.submit(decode_and_encode, batch, futures) if lanes else None))

        own_threads = torch.get_num_threads()
        if lanes:  # the lanes have the cores: this thread's small torch work (classifying the rows the
            torch.set_num_threads(1)  # consumer makes between batches) must not fork a team that waits for them
        try:
            for _ in range(layout.lanes + max(1, prefetch) - 1):
                submit_next()
            while pending:
                batch, futures, encoding = pending.popleft()
                if encoding is None:  # one lane: decoded ahead in the pool, encoded here
                    decoded = [f.result() for f in futures or []]
                    submit_next()  # refill once this batch is decoded: never more than `prefetch` ahead
                    yield encode(batch, decoded)
                else:
                    result = encoding.result()
                    submit_next()
                    yield result
        finally:  # a consumer that stops early (or an error) leaves nothing queued behind it
            torch.set_num_threads(own_threads)
            for _, futures, encoding in pending:
                for future in [*(futures or []), *([encoding] if encoding else [])]:
                    future.cancel()
