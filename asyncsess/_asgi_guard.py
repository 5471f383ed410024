"""The ASGI wrapper ``serve`` puts around every app: quiet disconnects, frozen heap."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect

from ._gc_freeze import freeze, unfreeze

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("asyncsess.serve")


class QuietDisconnects:
    """Log a client that left mid-request at DEBUG; freeze the heap after startup.

    A client that disconnects while its body is read makes Starlette raise
    `ClientDisconnect`, which uvicorn logs as "Exception in ASGI application"
    with a traceback: any client could fill the error log. Nothing is left to
    answer, so the wrapper notes it in one DEBUG line and ends the request.

    When the app's lifespan reports its startup complete (TensorFlow imported,
    the model built or loaded), the wrapper collects the garbage and freezes
    every object left (`gc.freeze`) before uvicorn hears of it: full
    collections then skip those long-lived objects, which would otherwise stop
    the loop for up to a second each. When the lifespan's shutdown completes,
    they are unfrozen again. Everything else passes through unchanged.

    Cancellation: the wrapper adds no waits; a cancelled request or lifespan
    is cancelled in the app as without it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _frozen_while_serving(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            client = scope.get("client")
            logger.debug(
                "Client %s disconnected during %s %s",
                f"{client[0]}:{client[1]}" if client else "?",
                scope.get("method"),
                scope.get("path"),
            )


def _frozen_while_serving(send: Send) -> Send:
    """*send* for a lifespan: freeze on its startup, unfreeze after its shutdown."""

    async def send_lifespan(message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            freeze("after the app's startup")
        elif kind == "lifespan.shutdown.complete":
            unfreeze("after the app's shutdown")
        await send(message)

    return send_lifespan
