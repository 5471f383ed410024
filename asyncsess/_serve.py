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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, build_parser

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

    import uvicorn
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
    try:
        app = _create_app(args, token)
    except ServeSetupError as exc:
        sys.stderr.write(f"asyncsess serve: error: {exc}\n")
        return EXIT_ERROR
    return serve(
        app,
        args.host,
        args.port,
        HTTPLimits.from_args(args),
        access_log=getattr(args, "access_log", False),
    )


class ServeSetupError(Exception):
    """What to serve cannot be served (a factory or model that does not load)."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts_for(host: str) -> tuple[str, ...] | None:
    """The Host headers an app bound to *host* answers (None: the loopback names).

    Any name for a non-loopback address (the token guards it); the loopback
    names, and *host* itself when it is another loopback address (127.0.0.2).
    """
    if not is_loopback(host):
        return ("*",)
    if host in LOOPBACK_HOSTS:
        return None
    return (*LOOPBACK_HOSTS, host)


def _create_app(args: argparse.Namespace, token: str | None) -> Starlette:
    allowed_hosts = allowed_hosts_for(args.host)
    if getattr(args, "saved_model", None):
        from ._model_server import create_model_app

        return create_model_app(
            args.saved_model,
            model_name=args.model_name,
            token=token,
            batching=not args.no_batching,
            max_batch_size=args.max_batch_size,
            batch_timeout_secs=args.batch_timeout_ms / 1000,
            allowed_hosts=allowed_hosts,
        )
    if getattr(args, "target", None):
        from ._serve_factory import create_factory_app

        return create_factory_app(
            args.target,
            logdir=args.logdir,
            model_name=args.model_name,
            save_checkpoint_secs=args.save_checkpoint_secs,
            token=token,
            batching=not args.no_batching,
            max_batch_size=args.max_batch_size,
            batch_timeout_secs=args.batch_timeout_ms / 1000,
            allowed_hosts=allowed_hosts,
        )
    from ._serve_app import create_app

    return create_app(
        args.logdir,
        token=token,
        input_dim=getattr(args, "input_dim", 4),
        allowed_hosts=allowed_hosts,
        save_checkpoint_secs=(
            600.0 if args.save_checkpoint_secs is None else args.save_checkpoint_secs
        ),
        batching=not args.no_batching,
        max_batch_size=args.max_batch_size,
        batch_timeout_secs=args.batch_timeout_ms / 1000,
    )


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


@dataclass(frozen=True)
class HTTPLimits:
    """How long a client may take and how many may connect (``serve --help``)."""

    max_connections: int = 1000
    timeout_keep_alive: float = 5.0
    timeout_header: float = 10.0
    timeout_body: float = 30.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> HTTPLimits:
        return cls(
            max_connections=getattr(args, "max_connections", cls.max_connections),
            timeout_keep_alive=getattr(
                args, "timeout_keep_alive", cls.timeout_keep_alive
            ),
            timeout_header=getattr(args, "timeout_header", cls.timeout_header),
            timeout_body=getattr(args, "timeout_body", cls.timeout_body),
        )


def serve(
    app: Starlette,
    host: str,
    port: int,
    limits: HTTPLimits | None = None,
    *,
    access_log: bool = False,
) -> int:
    """Serve *app* with uvicorn until SIGINT/SIGTERM; the exit status.

    The first signal shuts down gracefully: uvicorn stops accepting requests and
    the app's lifespan ends training after the current step (final checkpoint).
    Signals after that are logged and ignored, so the status stays 0.
    """
    import uvicorn

    config = uvicorn_config(app, host, port, limits, access_log=access_log)
    server = uvicorn.Server(config)
    try:
        # Bound before training starts, so a busy port fails fast and cleanly.
        sock = config.bind_socket()
    except SystemExit:  # uvicorn logged why
        return EXIT_ERROR
    # uvicorn re-raises the signal that stopped it once it is done; these
    # handlers take it and any later one (the process is on its way out), so
    # a graceful shutdown exits 0 instead of dying of a signal.
    for sig in _SIGNALS:
        signal.signal(sig, _after_shutdown)
    try:
        server.run(sockets=[sock])
    except SystemExit:  # the lifespan failed to start; uvicorn logged why
        return EXIT_ERROR
    finally:
        sock.close()
    return _outcome(app, server.started)


def uvicorn_config(
    app: Starlette,
    host: str,
    port: int,
    limits: HTTPLimits | None = None,
    *,
    access_log: bool = False,
    **more: Any,
) -> uvicorn.Config:
    """How ``serve`` runs *app* under uvicorn (benchmarks use it too).

    The app is wrapped in `QuietDisconnects`; the protocol is the guarded
    httptools (or h11) one with *limits*; the loop is uvloop when installed.
    """
    import uvicorn

    from ._asgi_guard import QuietDisconnects
    from ._http_protocol import guarded_protocol

    limits = limits or HTTPLimits()
    return uvicorn.Config(
        QuietDisconnects(app),
        host=host,
        port=port,
        lifespan="on",
        http=guarded_protocol(
            head_timeout=limits.timeout_header,
            body_timeout=limits.timeout_body,
            max_connections=limits.max_connections,
        ),
        # Connections are limited by the protocol, requests by the app: a slot
        # per connection (uvicorn's limit_concurrency) lets idle sockets lock
        # every route out.
        limit_concurrency=None,
        # uvicorn annotates an int, and hands it to loop.call_later: a float works.
        timeout_keep_alive=limits.timeout_keep_alive,  # type: ignore[arg-type]
        timeout_graceful_shutdown=10,
        # A line per request costs the loop more than answering /status does.
        access_log=access_log,
        server_header=False,
        proxy_headers=False,
        **more,
    )


def _outcome(app: Starlette, started: bool) -> int:
    if not started:
        return EXIT_ERROR
    trainer = getattr(app.state, "trainer", None)
    if trainer is None:  # nothing trained (a SavedModel, a serve-only factory)
        return EXIT_OK
    if trainer.error is not None:
        logger.error("Training had failed: %s", trainer.error)
        return EXIT_ERROR
    logger.info("Stopped at global step %d.", trainer.global_step)
    return EXIT_OK


def _after_shutdown(signum: int, frame: FrameType | None) -> None:
    logger.info("%s received after the shutdown; exiting", signal.Signals(signum).name)
