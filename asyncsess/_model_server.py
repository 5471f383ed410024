"""``serve --saved-model DIR``: a Starlette app serving TensorFlow Serving's REST API.

`create_model_app` puts together the versions of the model (``_model_versions``),
each loaded into its own session with a `Batcher` (``_saved_model``), the REST
routes (``_model_routes``), ``/metrics`` (``_model_metrics``), ``/openapi.json``
(``_model_openapi``) and a small page at ``/``.
"""

from __future__ import annotations

import functools
import html
import json
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ._batch_stats import BatchStats
from ._json_encode import error_body
from ._model_graph import is_saved_model
from ._model_metrics import ModelMetrics
from ._model_openapi import openapi_document
from ._model_routes import JSON_TYPE, ModelRoutes
from ._model_versions import ModelVersions, versions_at
from ._saved_model import open_saved_model
from ._serve_app import NO_SNIFF, PROMETHEUS_TEXT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_model_app(
    path: str,
    *,
    model_name: str | None = None,
    token: str | None = None,
    batching: bool = True,
    max_batch_size: int = 32,
    batch_timeout_secs: float = 0.001,
    allowed_hosts: tuple[str, ...] | None = None,
    max_enqueued: int | None = None,
    max_body_bytes: int = 16 << 20,
    poll_secs: float = 1.0,
    freeze_gc: bool = True,
) -> Starlette:
    """A Starlette app serving the SavedModel at *path* over TF Serving's REST API.

    *path* is a SavedModel folder or TensorFlow Serving's base path (numeric
    version folders: the highest that loads serves, higher ones are swapped in
    as they appear, looked for every *poll_secs*). The app's lifespan loads the
    model; a model that does not load fails the startup. Routes:
    ``/v1/models/NAME...`` (status, metadata, ``:predict``), ``GET /metrics``,
    ``GET /openapi.json`` and ``GET /``.

    Args:
      path: The SavedModel, or the base path of its versions.
      model_name: ``NAME`` in the routes (default: the folder's name; for a
        numeric version folder, its parent's).
      token: If set, ``POST`` needs ``Authorization: Bearer <token>`` (401).
      batching: Batch concurrent predictions through a `Batcher`.
      max_batch_size: Most rows of one batched step.
      batch_timeout_secs: Longest a prediction waits for others to batch with.
      allowed_hosts: Host names the app answers to (400 otherwise), against
        DNS rebinding; loopback names by default, ``("*",)`` for any.
      max_enqueued: Most rows waiting to batch (503 beyond; None: no limit).
      max_body_bytes: Largest request body accepted (413 above).
      poll_secs: Seconds between looks for a newer version.
      freeze_gc: Freeze each loaded version out of the garbage collector's
        full collections, and collect a replaced one at a quiet moment (see
        `asyncsess._model_versions.ModelVersions`).

    Raises:
      ServeSetupError: *path* is not a SavedModel nor a base path holding one.

    Cancellation: the lifespan owns the versions' sessions; see
    `ModelVersions.running`.
    """
    path = os.path.abspath(os.path.expanduser(path))
    _check_path(path)
    name = model_name or default_model_name(path)
    stats = BatchStats()
    open_version = functools.partial(
        _open_version,
        batching=batching,
        max_batch_size=max_batch_size,
        batch_timeout_secs=batch_timeout_secs,
        max_enqueued=max_enqueued,
        stats=stats,
    )
    versions = ModelVersions(
        path,
        name=name,
        open_version=open_version,
        poll_secs=poll_secs,
        freeze_gc=freeze_gc,
    )
    metrics = ModelMetrics(versions, stats)
    rest = ModelRoutes(
        versions, token=token, max_body_bytes=max_body_bytes, observer=metrics
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with versions.running():
            yield

    async def openapi(request: Request) -> Response:
        document = openapi_document(name, versions.current, token=bool(token))
        return Response(
            json.dumps(document, indent=1), media_type=JSON_TYPE, headers=NO_SNIFF
        )

    async def prometheus(request: Request) -> Response:
        return Response(
            metrics.exposition(), media_type=PROMETHEUS_TEXT, headers=NO_SNIFF
        )

    async def page(request: Request) -> Response:
        return HTMLResponse(_page(name), headers={**NO_SNIFF, **PAGE_HEADERS})

    routes = [
        *rest.routes(),  # first: the router tries routes in order, per request
        Route("/", page, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    hosts = LOOPBACK_HOSTS if allowed_hosts is None else allowed_hosts
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
    )
    app.state.model = versions
    app.state.metrics = metrics
    return app


def _open_version(path: str, version: int, **settings: Any) -> Any:
    return open_saved_model(path, version=version, **settings)


def default_model_name(path: str) -> str:
    """A model's default name: its folder's (a numeric version folder: its parent's)."""
    path = os.path.normpath(path)
    if is_saved_model(path) and os.path.basename(path).isdigit():
        path = os.path.dirname(path)
    return os.path.basename(path) or "model"


def _check_path(path: str) -> None:
    from ._serve import ServeSetupError

    if not os.path.isdir(path):
        raise ServeSetupError(
            f"--saved-model {path}: no such directory; give a SavedModel folder "
            "(it holds saved_model.pb) or a base path of numeric version folders."
        )
    try:
        found = versions_at(path)
    except OSError as exc:
        raise ServeSetupError(f"--saved-model {path}: cannot be read: {exc}") from None
    if not found:
        raise ServeSetupError(
            f"--saved-model {path}: neither a SavedModel (no saved_model.pb) nor a "
            "base path holding one in a numeric version folder (such as "
            f"{os.path.join(path, '1', 'saved_model.pb')})."
        )


async def _http_error(request: Request, exc: HTTPException) -> Response:
    headers = {**NO_SNIFF, **(exc.headers or {})}
    return Response(
        error_body(str(exc.detail)),
        exc.status_code,
        headers=headers,
        media_type=JSON_TYPE,
    )


PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Referrer-Policy": "no-referrer",
}


def _page(name: str) -> str:
    model = html.escape(name)
    example = html.escape(
        f"curl -X POST http://HOST:PORT/v1/models/{name}:predict "
        "-d '{\"instances\": [...]}'"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{model} (asyncsess)</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44em;margin:2em auto;
padding:0 1em}} code,pre{{background:#f3f3f3;padding:.1em .3em}}</style></head>
<body><h1>{model}</h1>
<p>This server answers TensorFlow Serving's REST API for model <code>{model}</code>.</p>
<ul>
<li><a href="/openapi.json">/openapi.json</a>: the API (OpenAPI 3.1), with each
signature's request and response shapes</li>
<li><a href="/v1/models/{model}">/v1/models/{model}</a>: the versions and their
state</li>
<li><a href="/v1/models/{model}/metadata">/v1/models/{model}/metadata</a>: the
signatures</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
<p>Predict:</p><pre>{example}</pre>
</body></html>
"""
