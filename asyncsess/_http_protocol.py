"""uvicorn's HTTP/1.1 protocol with deadlines and a connection limit.

uvicorn closes a keep-alive connection that stays idle between requests, but a
new connection that sends nothing, or a request head or body that trickles in
a byte at a time, is held for ever, and with ``limit_concurrency`` each such
connection takes a slot every route needs (tensorflow-serving-like services
are reached by anyone who can connect). This protocol gives every request head
*head_timeout* seconds from its first byte (or from the connection, for the
first request) and every body *body_timeout* seconds from the end of its head;
a client that misses the deadline is disconnected. Past *max_connections* open
connections a new one is answered 503 with ``Retry-After`` and closed, so idle
sockets can never lock out the routes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    import asyncio

logger = logging.getLogger("asyncsess.serve")

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: 54\r\n\r\n"
    b'{"error": "too many connections; retry in a second."}\n'
)


class GuardedH11Protocol(H11Protocol):
    """`H11Protocol` with head and body deadlines and a connection limit.

    Configure it with `guarded_protocol`, which returns a subclass holding the
    limits (uvicorn builds one protocol object per connection from a class).
    """

    head_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1000
    _deadline: asyncio.TimerHandle | None = None
    _waiting_for: Any = None  # the h11 state the deadline is for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            logger.debug("Refused a connection: %d open", len(self.connections))
            transport.write(_BUSY)
            transport.close()
            return
        self._arm(h11.IDLE, self.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self._disarm()  # idle till the next request: uvicorn's keep-alive timer
        else:  # a pipelined request is on its way
            self._follow()

    def _follow(self) -> None:
        """Arm the deadline for what the client is sending now, if any."""
        state = self.conn.their_state
        if state is self._waiting_for:
            return
        if state is h11.IDLE:  # the first bytes of a new request head
            self._arm(state, self.head_timeout)
        elif state is h11.SEND_BODY:
            self._arm(state, self.body_timeout)
        else:  # the request is complete (or the connection is done)
            self._disarm()

    def _arm(self, state: Any, seconds: float) -> None:
        self._disarm()
        self._waiting_for = state
        self._deadline = self.loop.call_later(seconds, self._expired, state)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_for = None

    def _expired(self, state: Any) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        what = "request head" if state is h11.IDLE else "request body"
        logger.debug("Closed a connection whose %s did not arrive in time", what)
        self.transport.close()


def guarded_protocol(
    *, head_timeout: float, body_timeout: float, max_connections: int
) -> type[GuardedH11Protocol]:
    """A `GuardedH11Protocol` class with these limits, for ``uvicorn.Config(http=)``."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "head_timeout": head_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
        },
    )
