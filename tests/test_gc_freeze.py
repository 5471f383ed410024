"""The garbage collector while serving: frozen after startup, closed versions freed."""

from __future__ import annotations

import functools
import gc
import logging
import os
import shutil
import weakref
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import pytest

pytest.importorskip("starlette", reason="needs the serve extra")

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from asyncsess._asgi_guard import QuietDisconnects
from asyncsess._gc_freeze import freeze, refreeze
from asyncsess._model_versions import ModelVersions
from asyncsess._saved_model import open_saved_model
from tests import _models, _serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from starlette.requests import Request

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (the state is the process's)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


async def until(predicate: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(60):
        while not predicate():  # noqa: ASYNC110 - state of background tasks
            await anyio.sleep(0.01)
    assert predicate(), what


class Holder:
    cycle: list[Any]


def test_freeze_and_refreeze(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="asyncsess.serve"):
        assert freeze("for a test") > 0
        assert gc.get_freeze_count() > 0
        holder = Holder()
        holder.cycle = [holder]
        freeze("with a cycle")
        ref = weakref.ref(holder)
        del holder
        gc.collect()
        assert ref() is not None  # frozen: the collector never looks at it
        assert refreeze("for a test") > 0
        assert ref() is None
        assert gc.get_freeze_count() > 0
    assert "Froze" in caplog.text
    assert "objects with a cycle" in caplog.text
    assert "Collected" in caplog.text


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.frozen_at_startup = gc.get_freeze_count()
    yield


async def frozen(request: Request) -> JSONResponse:
    return JSONResponse({"frozen": gc.get_freeze_count()})


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn's
async def test_the_serve_wrapper_freezes_after_startup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Starlette(routes=[Route("/frozen", frozen)], lifespan=lifespan)
    with caplog.at_level(logging.DEBUG, logger="asyncsess.serve"):
        async with _serving.over_http(QuietDisconnects(app)) as client:
            answer = (await client.get("/frozen")).json()
        assert app.state.frozen_at_startup == 0  # not before the startup ran
        assert answer["frozen"] > 0
        assert gc.get_freeze_count() == 0  # unfrozen after the shutdown
    assert "after the app's startup" in caplog.text


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    base = str(tmp_path_factory.getbasetemp() / "models")
    return {
        1: _models.built(base, "half_plus_two", _models.half_plus),
        2: _models.built(base, "half_plus_three", _models.half_plus, plus=3.0),
    }


def served_versions(base: Path, **gc_settings: Any) -> ModelVersions:
    return ModelVersions(
        str(base),
        name="half",
        open_version=functools.partial(_open, batching=False),
        poll_secs=0.02,
        freeze_gc=True,
        **gc_settings,
    )


def _open(path: str, number: int, **settings: Any) -> Any:
    return open_saved_model(path, version=number, **settings)


def graph_of(versions: ModelVersions) -> weakref.ref[Any]:
    served: Any = versions.current
    return weakref.ref(served.model.graph)


def add_version(models: dict[int, str], base: Path, number: int) -> None:
    incoming = base.parent / f"incoming{number}"
    shutil.copytree(models[number], incoming)
    os.rename(incoming, base / str(number))


def version_number(versions: ModelVersions) -> int:
    served = versions.current
    return -1 if served is None else served.version


#: On asyncio a cancelled timer keeps the context it was scheduled in until its
#: deadline; a closed session's timers (``move_on_after(stop_grace_period_secs)``,
#: 120 s) hold ``current_worker``: `WorkerThread.aclose` drops its graph for that.
BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@BACKENDS
async def test_a_replaced_version_is_frozen_then_collected(
    models: dict[int, str], tmp_path: Path
) -> None:
    base = tmp_path / "half"
    shutil.copytree(models[1], base / "1")
    async with served_versions(base, gc_quiet_secs=0.05).running() as versions:
        assert gc.get_freeze_count() > 0  # frozen once the first version loaded
        first = graph_of(versions)
        add_version(models, base, 2)
        await until(lambda: version_number(versions) == 2, "version 2 serves")
        # Version 1 closes, and its frozen graph is collected once quiet.
        await until(lambda: versions.releases == 1, "a collection")
        assert first() is None
        assert gc.get_freeze_count() > 0  # and what is left is frozen again
        async with versions.use(None) as served:
            assert served.version == 2
    assert gc.get_freeze_count() == 0  # unfrozen once no longer serving


@BACKENDS
async def test_the_collection_waits_for_a_quiet_moment(
    models: dict[int, str], tmp_path: Path
) -> None:
    base = tmp_path / "half"
    shutil.copytree(models[1], base / "1")
    settings = {"gc_quiet_secs": 0.05, "gc_wait_secs": float("inf")}
    async with served_versions(base, **settings).running() as versions:
        first = graph_of(versions)
        async with AsyncExitStack() as stack:
            old = AsyncExitStack()
            await old.enter_async_context(versions.use(None))  # a request of v1
            add_version(models, base, 2)
            await until(lambda: version_number(versions) == 2, "version 2 serves")
            await stack.enter_async_context(versions.use(None))  # one of v2
            await old.aclose()  # version 1's last request ends: it closes
            await until(lambda: states(versions)[1] == "END", "version 1 closes")
            # A request is in flight: no full collection yet.
            await anyio.sleep(0.3)
            assert versions.releases == 0
            assert first() is not None
        await until(lambda: versions.releases == 1, "a collection once quiet")
        assert first() is None


def states(versions: ModelVersions) -> dict[int, str]:
    return {s.version: s.state.value for s in versions.statuses()}
