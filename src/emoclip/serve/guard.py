"""The connection guard: idle, silent and slow clients cannot starve the requests that matter.

uvicorn (h11) puts no deadline on a connection that opens and sends nothing, or sends its request
headers one byte a minute (slowloris), and its ``limit_concurrency`` counts such connections as if
they were requests: 128 idle sockets made every answer, ``/health`` included, a 503. Here:

- a connection must complete its request headers within ``header_timeout_s`` of opening (or of
  its previous response): bytes trickling in do not extend the deadline; then it is closed;
- at most ``max_open`` connections are held; a new one beyond that closes the connection that has
  waited longest *without a request in progress* (never one being answered), so a flood of idle
  sockets only ever evicts itself;
- the limit on requests in progress is the app's (``app.ConcurrencyLimit``), which counts requests
  whose headers arrived, answers 503 with Retry-After, and never refuses the probes.

``guarded_protocol`` makes the uvicorn protocol class for one server; ``ConnectionGuard`` holds
the counts that ``/metrics`` shows.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass
class ConnectionGuard:
    """Limits and live counts of one server's connections (read by the metrics at scrape time)."""

    header_timeout_s: float
    max_open: int
    open: int = 0
    header_timeouts: int = 0
    evicted: int = 0
    # connections with no request in progress, oldest first (the candidates for eviction)
    waiting: OrderedDict = field(default_factory=OrderedDict)

    def note_waiting(self, protocol: GuardedH11Protocol) -> None:
        self.waiting[protocol] = None
        self.waiting.move_to_end(protocol)

    def note_busy(self, protocol: GuardedH11Protocol) -> None:
        self.waiting.pop(protocol, None)

    def make_room(self, newcomer: GuardedH11Protocol) -> None:
        """Over ``max_open``: close the longest-waiting idle connections (possibly the newcomer itself)."""
        while self.open > self.max_open and self.waiting:
            oldest = next(iter(self.waiting))
            self.waiting.pop(oldest)
            self.evicted += 1
            oldest.close_idle()
            if oldest is newcomer:
                break


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and idle eviction (``guard`` is set per server)."""

    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._closed_by_guard = False
        self.guard.open += 1
        self._await_headers()
        self.guard.make_room(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self.guard.note_busy(self)
        self.guard.open -= 1
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers are complete: it is in progress now
            self._cancel_header_timer()
            self.guard.note_busy(self)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this connection gets the same deadline
        super().on_response_complete()  # may start a pipelined request (handle_events: busy again)

    # -- the guard's part -------------------------------------------------------------------------
    def _await_headers(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._header_timeout)
        self.guard.note_waiting(self)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.guard.header_timeouts += 1
            self.close_idle()

    def close_idle(self) -> None:
        """Close a connection with no request in progress (nothing is lost: no request was read)."""
        self._cancel_header_timer()
        self.guard.note_busy(self)
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class bound to ``guard`` (uvicorn instantiates it once per connection)."""
    return type("EmoclipH11Protocol", (GuardedH11Protocol,), {"guard": guard})
