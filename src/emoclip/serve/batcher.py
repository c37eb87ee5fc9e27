"""Micro-batching: concurrent requests' images coalesced into encoder batches, on one model thread.

A CLIP image encoder is several times faster per image in a batch of 16 than one at a time, but
HTTP requests arrive one by one. Requests put a ``Job`` on a queue and await its future; one worker
thread takes the first job, waits up to ``max_wait`` for others (never when a backlog is already
there), packs jobs up to ``max_batch`` images, and runs each taxonomy's images in one ``Tagger.tag``
call. The model thus runs off the event loop, one batch at a time (no two threads fight over the
CPU's cores), while the loop keeps accepting and reading requests.

The queue is bounded by what the work costs, not only by its count: in images, in decoded pixels
(one 89-megapixel PNG costs what hundreds of photos cost), and in classifier builds (a new label
set costs the text encoding of all its prompts before any image runs). A request that would
overflow any of them is refused at once (the service answers 503 with Retry-After) instead of
letting latency and memory grow without bound. A batch is packed up to ``max_batch`` images and
``max_batch_pixels`` pixels, which bounds the memory that decoding one batch takes.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

log = logging.getLogger("emoclip")


class QueueFull(Exception):
    """The queue has no room for a request's images; ``retry_after`` is an estimate in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the model queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    """One request's images under one taxonomy key; ``future`` gets one result per image."""

    key: Hashable
    items: Sequence
    pixels: int = 0
    build: bool = False           # the key's classifier is not built yet: the first run builds it
    future: Future = field(default_factory=Future)


RunGroup = Callable[[Hashable, list], list]   # (key, items) -> one result per item, in order


class MicroBatcher:
    """Coalesces concurrent jobs into batches of at most ``max_batch`` items, run by ``run`` on one thread.

    ``on_batch(items, seconds)`` is called after every group run (metrics; tests use it to see
    batch sizes)."""

    def __init__(self, run: RunGroup, max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None, max_queue_pixels: int | None = None,
                 max_batch_pixels: int | None = None, max_pending_builds: int | None = None) -> None:
        self.run = run
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue = max(1, max_queue)
        self.max_queue_pixels = max_queue_pixels
        self.max_batch_pixels = max_batch_pixels
        self.max_pending_builds = max_pending_builds
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        self._queued_pixels = 0
        self._pending_builds: dict[Hashable, int] = {}   # key -> queued jobs that would build it
        self._seconds_per_build = 1.0  # updated from real builds; only used for Retry-After
        self._closed = False
        self._seconds_per_item = 0.1   # updated from real batches; only used for Retry-After
        self._thread = threading.Thread(target=self._loop, name="emoclip-model", daemon=True)
        self._thread.start()

    # -- the request side (event loop) ---------------------------------------------------------
    @property
    def queued(self) -> int:
        """Items waiting for the model (not yet in a running batch)."""
        return self._queued

    @property
    def queued_pixels(self) -> int:
        return self._queued_pixels

    @property
    def pending_builds(self) -> int:
        """Distinct classifiers (label sets, taxonomies) waiting to be built."""
        return len(self._pending_builds)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, key: Hashable, items: Sequence, pixels: int = 0, build: bool = False) -> Future:
        """Queue a job of ``pixels`` decoded pixels (``build``: its classifier is still to be built);
        raise ``QueueFull`` when it does not fit (an empty queue takes any job)."""
        with self._lock:
            if self._closed:
                raise QueueFull(1)
            new_build = build and key not in self._pending_builds
            if self._queued and (self._queued + len(items) > self.max_queue or (
                    self.max_queue_pixels is not None and self._queued_pixels + pixels > self.max_queue_pixels)):
                raise QueueFull(self._retry_after())
            builds_full = self.max_pending_builds is not None and len(self._pending_builds) >= self.max_pending_builds
            if new_build and builds_full:
                raise QueueFull(self._retry_after())
            self._queued += len(items)
            self._queued_pixels += pixels
            if build:
                self._pending_builds[key] = self._pending_builds.get(key, 0) + 1
            job = Job(key, items, pixels, build)
            self._queue.put(job)
        return job.future

    def _retry_after(self) -> int:
        """Seconds until the queue has drained, estimated from recent batches and builds."""
        return max(1, math.ceil(self._queued * self._seconds_per_item
                                + len(self._pending_builds) * self._seconds_per_build))

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued jobs (without waiting for company), then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    # -- the model thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        carry: Job | None = None
        stopping = False
        while not stopping:
            job = carry or self._queue.get()
            carry = None
            if job is None:
                break
            batch, size, pixels = [job], len(job.items), job.pixels
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                remaining = 0.0 if self._closed else deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                if size + len(nxt.items) > self.max_batch or (
                        self.max_batch_pixels is not None and pixels + nxt.pixels > self.max_batch_pixels):
                    carry = nxt
                    break
                batch.append(nxt)
                size += len(nxt.items)
                pixels += nxt.pixels
            self._run_batch(batch)
        if carry is not None:
            self._run_batch([carry])

    def _run_batch(self, jobs: list[Job]) -> None:
        with self._lock:
            self._queued -= sum(len(job.items) for job in jobs)
            self._queued_pixels -= sum(job.pixels for job in jobs)
            for job in jobs:
                if job.build:
                    left = self._pending_builds.get(job.key, 1) - 1
                    if left > 0:
                        self._pending_builds[job.key] = left
                    else:
                        self._pending_builds.pop(job.key, None)
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # timed-out jobs drop out
        groups: dict[Hashable, list[Job]] = {}
        for job in live:
            groups.setdefault(job.key, []).append(job)
        for key, group in groups.items():
            items = [item for job in group for item in job.items]
            started = time.perf_counter()
            try:
                results = self.run(key, items)
            except Exception as exc:  # the requests answer with it; the thread lives on
                for job in group:
                    job.future.set_exception(exc)
                continue
            seconds = time.perf_counter() - started
            if any(job.build for job in group):
                self._seconds_per_build = seconds  # the build dominates this run's time
            else:
                self._seconds_per_item = seconds / max(1, len(items))
            if self.on_batch:
                self.on_batch(len(items), seconds)
            start = 0
            for job in group:
                job.future.set_result(results[start:start + len(job.items)])
                start += len(job.items)
