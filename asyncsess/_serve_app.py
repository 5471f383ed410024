"""The web service's Starlette app: routes, request limits and the bearer token."""

from __future__ import annotations

import hmac
import json
import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ._serve_page import PAGE, PAGE_HEADERS
from ._serve_trainer import ModelUnavailable, ServiceConfig, Trainer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

logger = logging.getLogger("asyncsess.serve")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
NO_SNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class Refused(Exception):
    """A request the service turns down with a 4xx status and a message."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def create_app(
    logdir: str,
    *,
    token: str | None = None,
    input_dim: int = 4,
    last_step: int | None = None,
    step_interval: float = 0.0,
    save_checkpoint_secs: float = 600.0,
    max_rows: int = 1024,
    max_body_bytes: int = 1 << 20,
    allowed_hosts: tuple[str, ...] | None = None,
) -> Starlette:
    """A Starlette app that trains the demo model in the background and serves it.

    Its lifespan opens a `MonitoredTrainingSession` over the demo model (restoring
    the last checkpoint in *logdir*) and trains in a background task until the
    app shuts down or ``POST /stop``; then the current step finishes, the hooks'
    ``end`` runs and the final checkpoint is written. Routes: ``GET /``,
    ``GET /status``, ``GET /history``, ``GET /metrics``, ``POST /predict``,
    ``POST /stop``.

    Args:
      logdir: Checkpoints and TensorBoard event files.
      token: If set, ``POST`` routes need ``Authorization: Bearer <token>``.
      input_dim: Features per row of the model (and of ``/predict``).
      last_step: Stop training at this global step (None: train until stopped).
      step_interval: Seconds to sleep between steps (0: as fast as it goes).
      save_checkpoint_secs: Seconds between periodic checkpoints.
      max_rows: Most rows one ``/predict`` call may send (422 above).
      max_body_bytes: Largest request body accepted (413 above).
      allowed_hosts: Host names the app answers to (400 otherwise), against DNS
        rebinding; loopback names by default, ``("*",)`` for any.

    Cancellation: the app's lifespan owns the training task; see
    `Trainer.running_in_background`.
    """
    config = ServiceConfig(
        logdir=logdir,
        input_dim=input_dim,
        token=token or None,
        last_step=last_step,
        step_interval=step_interval,
        save_checkpoint_secs=save_checkpoint_secs,
        max_rows=max_rows,
        max_body_bytes=max_body_bytes,
    )
    if allowed_hosts is None:
        allowed_hosts = config.allowed_hosts
    trainer = Trainer(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with trainer.running_in_background():
            yield

    routes = [
        Route("/", _page, methods=["GET"]),
        Route("/status", _status, methods=["GET"]),
        Route("/history", _history, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/predict", _predict, methods=["POST"]),
        Route("/stop", _stop, methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={Refused: _refused},  # type: ignore[dict-item]
    )
    app.state.trainer = trainer
    return app


def _trainer(request: Request) -> Trainer:
    trainer: Trainer = request.app.state.trainer
    return trainer


async def _page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


async def _status(request: Request) -> Response:
    return JSONResponse(_trainer(request).status(), headers=NO_SNIFF)


async def _history(request: Request) -> Response:
    return JSONResponse(_trainer(request).history_document(), headers=NO_SNIFF)


async def _metrics(request: Request) -> Response:
    body = _trainer(request).metrics.exposition()
    return Response(body, media_type=PROMETHEUS_TEXT, headers=NO_SNIFF)


async def _stop(request: Request) -> Response:
    trainer = _trainer(request)
    _authorize(request, trainer.config)
    await _read_body(request, trainer.config.max_body_bytes)
    trainer.request_stop()
    logger.info("Stop requested by %s", _client(request))
    return JSONResponse(
        {"stopping": trainer.running, "global_step": trainer.global_step},
        status_code=202,
        headers=NO_SNIFF,
    )


async def _predict(request: Request) -> Response:
    trainer = _trainer(request)
    config = trainer.config
    _authorize(request, config)
    body = await _read_body(request, config.max_body_bytes)
    rows = parse_rows(body, config.input_dim, config.max_rows)
    try:
        y = await trainer.predict(rows)
    except ModelUnavailable as exc:
        raise Refused(503, str(exc), {"Retry-After": "1"}) from None
    return JSONResponse({"y": y, "global_step": trainer.global_step}, headers=NO_SNIFF)


async def _refused(request: Request, exc: Refused) -> Response:
    trainer = _trainer(request)
    trainer.metrics.rejected.labels(str(exc.status)).inc()
    headers = {**NO_SNIFF, **exc.headers}
    return JSONResponse({"detail": exc.detail}, exc.status, headers=headers)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


# -- who may control it ------------------------------------------------------------


def _authorize(request: Request, config: ServiceConfig) -> None:
    """Refuse cross-site browser requests, and requests without the bearer token."""
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request):
        raise Refused(403, f"Cross-origin request from {origin!r} refused.")
    if config.token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Headers arrive as latin-1 text: back to their bytes, whatever they hold.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("latin-1"), config.token.encode("utf-8")
    ):
        raise Refused(
            401,
            "Missing or wrong token: send the header 'Authorization: Bearer <token>' "
            "with the token the service was started with.",
            {"WWW-Authenticate": 'Bearer realm="asyncsess"'},
        )


def _same_origin(origin: str, request: Request) -> bool:
    """Whether a browser's Origin header names this very host and port."""
    _, _, rest = origin.partition("://")
    return rest.rstrip("/").lower() == request.headers.get("host", "").lower()


# -- request bodies ----------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes *limit* bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"The request body is over the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"The request body is over the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_rows(body: bytes, input_dim: int, max_rows: int) -> np.ndarray[Any, Any]:
    """Validate a ``/predict`` body; the rows as a float32 array, or 422 saying why.

    Nothing reaches the session unless it is ``{"x": [[n, ...], ...]}`` with 1 to
    *max_rows* rows of *input_dim* finite numbers each (float32 range).
    """
    payload = _parse_json(body)
    if not isinstance(payload, dict) or "x" not in payload:
        raise Refused(422, 'Expected a JSON object {"x": [[number, ...], ...]}.')
    extra = sorted(set(payload) - {"x"})
    if extra:
        raise Refused(422, f"Unexpected key(s) {extra!r}; only 'x' is accepted.")
    rows = payload["x"]
    if not isinstance(rows, list) or not rows:
        raise Refused(422, "'x' must be a non-empty list of rows.")
    if len(rows) > max_rows:
        raise Refused(422, f"'x' has {len(rows)} rows; at most {max_rows} per call.")
    for i, row in enumerate(rows):
        _check_row(i, row, input_dim)
    return np.asarray(rows, dtype=np.float32)


def _parse_json(body: bytes) -> Any:
    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        return json.loads(body, parse_constant=reject_constant)
    except RecursionError:
        raise Refused(422, "The JSON body is nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise Refused(422, f"The body is not valid JSON: {exc}") from None


def _check_row(i: int, row: Any, input_dim: int) -> None:
    if not isinstance(row, list):
        raise Refused(422, f"x[{i}] must be a list of {input_dim} numbers.")
    if len(row) != input_dim:
        raise Refused(
            422, f"x[{i}] has {len(row)} values; the model takes {input_dim}."
        )
    for j, value in enumerate(row):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(
                422, f"x[{i}][{j}] must be a number. Received: {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(422, f"x[{i}][{j}] must be finite. Received: {value!r}")
        if abs(value) > _FLOAT32_MAX:
            raise Refused(422, f"x[{i}][{j}] is out of float32 range.")


_FLOAT32_MAX = float(np.finfo(np.float32).max)
