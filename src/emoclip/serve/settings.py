"""The service's own options (limits, batching, security), and the rule for binding beyond loopback.

The model side is a ``TaggerConfig`` (shared with ``predict``); everything here is about HTTP:
how much a client may send, how requests are batched, who may call. Defaults are safe for a
service on one machine: loopback only, bodies capped, a bounded queue.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from emoclip.core.errors import EmoclipError

API_KEY_ENV = "EMOCLIP_API_KEY"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """How the service listens, batches and limits what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    # micro-batching
    max_batch: int | None = None      # images per encoder batch; None: the encoder's default (16 CPU, 64 CUDA)
    max_wait_ms: float = 10.0         # how long the first request of a batch waits for company
    max_queue: int = 256              # images waiting for the model; beyond it: 503 + Retry-After
    # limits on what a request may carry
    max_upload_bytes: int = 32 * MIB  # the whole request body, enforced while it streams in
    max_images: int = 32              # images in one request
    max_connections: int = 128        # requests handled at once (each may hold a body in memory); beyond: 503
    max_labels: int = 64              # labels= entries in one request
    request_timeout_s: float = 60.0   # reading the body, waiting in the queue and tagging, together
    max_taxonomies: int = 16          # per-request taxonomies/label sets kept loaded (least recently used out)
    # security
    api_key: str | None = None
    insecure_no_auth: bool = False
    cors_origins: tuple[str, ...] = ()

    def replace(self, **changes) -> ServeSettings:
        return dataclasses.replace(self, **changes)

    @property
    def auth_required(self) -> bool:
        return bool(self.api_key)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(settings: ServeSettings) -> None:
    """Refuse to expose an unauthenticated service beyond this machine unless told to explicitly."""
    if is_loopback(settings.host) or settings.api_key or settings.insecure_no_auth:
        return
    raise EmoclipError(
        f"binding {settings.host} would let anyone who can reach this machine use the service without a key; "
        f"pass --api-key KEY (or set {API_KEY_ENV}), or --insecure-no-auth if that is really what you want")
