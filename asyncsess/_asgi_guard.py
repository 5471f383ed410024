"""The ASGI wrapper ``serve`` puts around every app: quiet client disconnects."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("asyncsess.serve")


class QuietDisconnects:
    """Log a client that left mid-request at DEBUG instead of uvicorn's ERROR.

    A client that disconnects while its body is read makes Starlette raise
    `ClientDisconnect`, which uvicorn logs as "Exception in ASGI application"
    with a traceback: any client could fill the error log. Nothing is left to
    answer, so the wrapper notes it in one DEBUG line and ends the request.
    Everything else passes through unchanged, the lifespan included.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
