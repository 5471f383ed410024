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

`guarded_protocol` builds on uvicorn's httptools protocol (its C parser, of the
``serve`` extra) when httptools is installed, else on its pure-Python h11 one.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any, ClassVar, cast

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


class _Deadlines:
    """The deadlines and the connection limit, shared by both protocols below."""

    head_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1000
    _deadline: asyncio.TimerHandle | None = None
    _waiting_for: str | None = None  # "head" or "body": what the deadline is for
    connections: set[Any]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def _admitted(self, transport: asyncio.Transport) -> bool:
        """Refuse a connection past *max_connections*; else arm the head deadline."""
        if len(self.connections) > self.max_connections:
            logger.debug("Refused a connection: %d open", len(self.connections))
            transport.write(_BUSY)
            transport.close()
            return False
        self._arm("head", self.head_timeout)
        return True

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._waiting_for = what
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_for = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        logger.debug(
            "Closed a connection whose request %s did not arrive in time", what
        )
        self.transport.close()


class GuardedH11Protocol(_Deadlines, H11Protocol):
    """`H11Protocol` with head and body deadlines and a connection limit.

    Configure it with `guarded_protocol`, which returns a subclass holding the
    limits (uvicorn builds one protocol object per connection from a class).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admitted(transport)

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
        what = {h11.IDLE: "head", h11.SEND_BODY: "body"}.get(state)
        if what is None:  # the request is complete (or the connection is done)
            self._disarm()
        elif what != self._waiting_for:
            self._arm(what, self.head_timeout if what == "head" else self.body_timeout)


if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
        """`HttpToolsProtocol` with head and body deadlines and a connection limit."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._admitted(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._waiting_for != "head":  # a keep-alive request's first bytes
                self._arm("head", self.head_timeout)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if self.pipeline:  # queued behind a request in flight: not read yet
                self._disarm()
            else:
                self._arm("body", self.body_timeout)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()
            # Answered before its body was all in (a 401, a 413): uvicorn's
            # keep-alive timer, armed by the answer, was stopped by the rest
            # of the body arriving; without it the connection stays for ever.
            cycle = self.cycle
            if (
                cycle is not None
                and cycle.response_complete
                and self.timeout_keep_alive_task is None
                and not self.transport.is_closing()
            ):
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

        def on_response_complete(self) -> None:
            super().on_response_complete()
            cycle = self.cycle  # a pipelined request uvicorn started now
            if cycle is not None and not cycle.response_complete and cycle.more_body:
                self._arm("body", self.body_timeout)

    _BASE: type[_Deadlines] = GuardedHttpToolsProtocol
else:  # pragma: no cover - httptools is part of the serve extra
    _BASE = GuardedH11Protocol


def guarded_protocol(
    *,
    head_timeout: float,
    body_timeout: float,
    max_connections: int,
    base: type[_Deadlines] | None = None,
) -> type[asyncio.Protocol]:
    """A guarded protocol class with these limits, for ``uvicorn.Config(http=)``.

    *base* is `GuardedH11Protocol` or ``GuardedHttpToolsProtocol`` (the default
    when httptools is installed).
    """
    protocol = type(
        "GuardedProtocol",
        (base or _BASE,),
        {
            "head_timeout": head_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
        },
    )
    return cast("type[asyncio.Protocol]", protocol)
