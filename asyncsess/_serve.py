"""``python -m asyncsess serve``: the training web service under uvicorn.

The app itself is `asyncsess._serve_app.create_app` (Starlette); this module
checks who may reach it, binds the socket and runs uvicorn until a signal.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from ._cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, build_parser

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

    from starlette.applications import Starlette

logger = logging.getLogger("asyncsess.serve")

TOKEN_ENV = "ASYNCSESS_TOKEN"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NEW_TOKEN = "import secrets; print(secrets.token_urlsafe())"


def __getattr__(name: str) -> Any:
    # create_app pulls in TensorFlow and Starlette: only when asked for.
    if name == "create_app":
        from ._serve_app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(args: argparse.Namespace | Sequence[str]) -> int:
    """Run ``serve`` with parsed arguments (or a ``serve`` argument list); the status.

    Exit status: 0 after a graceful shutdown (SIGINT/SIGTERM, final checkpoint
    written), 1 if the service could not start or training failed, 2 if a
    non-loopback ``--host`` was asked for without a token.
    """
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(["serve", *args])
    token = args.token or os.environ.get(TOKEN_ENV) or None
    problem = bind_problem(args.host, token)
    if problem is not None:
        sys.stderr.write(f"asyncsess serve: error: {problem}\n")
        return EXIT_USAGE
    from ._serve_app import create_app

    app = create_app(
        args.logdir,
        token=token,
        input_dim=getattr(args, "input_dim", 4),
        allowed_hosts=None if is_loopback(args.host) else ("*",),
    )
    return serve(app, args.host, args.port)


def is_loopback(host: str) -> bool:
    """Whether *host* (a name or an address) only accepts this machine's clients."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, token: str | None) -> str | None:
    """Why serving on *host* with *token* is refused, or None if it is fine."""
    if token is not None and not token.strip():
        return f"the token is blank; set a real one with --token or ${TOKEN_ENV}."
    if token is None and not is_loopback(host):
        return (
            f"refusing to listen on {host} without a token: anyone who can reach it "
            "could stop training or query the model. Set one with --token TOKEN "
            f"or the {TOKEN_ENV} environment variable (for example "
            f"{TOKEN_ENV}=$(python -c {_NEW_TOKEN!r})), or listen on 127.0.0.1."
        )
    return None


def serve(app: Starlette, host: str, port: int) -> int:
    """Serve *app* with uvicorn until SIGINT/SIGTERM; the exit status.

    The first signal shuts down gracefully: uvicorn stops accepting requests and
    the app's lifespan ends training after the current step (final checkpoint).
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        limit_concurrency=64,
        timeout_graceful_shutdown=10,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    try:
        # Bound before training starts, so a busy port fails fast and cleanly.
        sock = config.bind_socket()
    except SystemExit:  # uvicorn logged why
        return EXIT_ERROR
    # uvicorn re-raises the signal that stopped it once it is done; these
    # handlers take it, so a graceful shutdown exits 0 instead of dying of it.
    previous = {sig: signal.signal(sig, _after_shutdown) for sig in _SIGNALS}
    try:
        server.run(sockets=[sock])
    except SystemExit:  # the lifespan failed to start; uvicorn logged why
        return EXIT_ERROR
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return _outcome(app, server.started)


def _outcome(app: Starlette, started: bool) -> int:
    trainer = app.state.trainer
    if not started:
        return EXIT_ERROR
    if trainer.error is not None:
        logger.error("Training had failed: %s", trainer.error)
        return EXIT_ERROR
    logger.info("Stopped at global step %d.", trainer.global_step)
    return EXIT_OK


def _after_shutdown(signum: int, frame: FrameType | None) -> None:
    logger.debug("%s received after shutdown", signal.Signals(signum).name)
