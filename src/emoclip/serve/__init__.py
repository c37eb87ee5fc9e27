"""``emoclip serve``: the Tagger behind HTTP, with a web page.

The service loads one tagger (``tagging.build_tagger``, as ``predict`` does) and answers
``POST /v1/predict`` with rows in exactly ``predict``'s JSONL schema. Its parts, one concept each:

- ``settings``  — the service's own options (limits, batching, security) and the bind/auth rule;
- ``uploads``   — multipart bodies read as a stream under a byte cap, and the triage of each upload;
- ``taggers``   — the loaded tagger and its per-taxonomy twins on the same backbone (an LRU);
- ``batcher``   — the micro-batcher: concurrent requests coalesced into encoder batches on one thread;
- ``metrics``   — Prometheus counters and histograms, in a registry per app;
- ``app``       — the FastAPI application (endpoints, auth, CORS, the page);
- ``server``    — uvicorn, with a graceful stop on SIGTERM.
"""

from __future__ import annotations

from emoclip.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
