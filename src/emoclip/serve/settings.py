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
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
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
    max_open_connections: int = 1024  # sockets held open; beyond, the longest-waiting idle one is closed
    header_timeout_s: float = 10.0    # a connection must complete its request headers within this; else closed
    body_idle_timeout_s: float = 10.0  # the longest pause within a request body (slow POST): 408
    keep_alive_s: float = 5.0         # an idle keep-alive connection is closed after this
    max_request_pixels: int = 256_000_000  # decoded pixels of all images of one request together: 413
    max_queue_pixels: int = 1_000_000_000  # decoded pixels waiting for the model; beyond: 503 + Retry-After
    max_batch_pixels: int = 256_000_000    # decoded pixels in one encoder batch (bounds decoding memory)
    max_pending_builds: int = 2       # new label sets/taxonomies waiting for their classifier build; beyond: 503
    max_labels: int = 64              # labels= entries in one request
    request_timeout_s: float = 60.0   # reading the body, waiting in the queue and tagging, together
    max_taxonomies: int = 16          # per-request taxonomies/label sets kept loaded (least recently used out)
    # security
    api_key: str | None = None
    insecure_no_auth: bool = False
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host header values accepted; empty: loopback names on a loopback bind

    def replace(self, **changes) -> ServeSettings:
        return dataclasses.replace(self, **changes)

    @property
    def auth_required(self) -> bool:
        return bool(self.api_key)

    def host_allow_list(self) -> frozenset[str] | None:
        """Host header names (without port) the service answers; None: any.

        On a loopback bind without an explicit list only loopback names pass, so a web page whose
        DNS name is re-bound to 127.0.0.1 (DNS rebinding) cannot talk to the service."""
        if self.allowed_hosts:
            return frozenset(h.lower().strip("[]") for h in self.allowed_hosts) | LOOPBACK_NAMES
        return LOOPBACK_NAMES if is_loopback(self.host) else None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(settings: ServeSettings) -> None:
    """Refuse to expose an unauthenticated service beyond this machine unless told to explicitly.

    Cheap on purpose (no model, no web framework): the CLI calls it before the heavy imports, so a
    refused combination answers at once."""
    if not settings.host.strip():
        raise EmoclipError("--host is empty; give an address to listen on, e.g. --host 127.0.0.1")
    if settings.api_key is not None and not settings.api_key.strip():
        raise EmoclipError(f"the API key is empty or blank; pass a real --api-key (or {API_KEY_ENV}), or leave it "
                           "out on a loopback address")
    if settings.insecure_no_auth and settings.api_key:
        raise EmoclipError("--insecure-no-auth and --api-key were both given; drop one (with a key the service "
                           "is not open)")
    if is_loopback(settings.host) or settings.api_key or settings.insecure_no_auth:
        return
    raise EmoclipError(
        f"binding {settings.host} would let anyone who can reach this machine use the service without a key; "
        f"pass --api-key KEY (or set {API_KEY_ENV}), or --insecure-no-auth if that is really what you want")
