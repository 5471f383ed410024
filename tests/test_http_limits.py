"""The serve protocol's deadlines and connection limit, over real sockets."""

from __future__ import annotations

import logging
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

uvicorn = pytest.importorskip("uvicorn", reason="needs the serve extra")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from asyncsess._asgi_guard import QuietDisconnects  # noqa: E402
from asyncsess._http_protocol import (  # noqa: E402
    _BASE,
    GuardedH11Protocol,
    guarded_protocol,
)

from ._serving import serve_command  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn's
ROOT = Path(__file__).resolve().parent.parent


async def status(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


async def slow(request: Request) -> JSONResponse:
    await anyio.sleep(1.5)
    return JSONResponse({"slow": True})


APP = Starlette(
    routes=[
        Route("/status", status),
        Route("/slow", slow),
        Route("/echo", echo, methods=["POST"]),
    ]
)


#: Both protocols: httptools' (the default, from the serve extra) and h11's.
BASES = sorted({_BASE, GuardedH11Protocol}, key=lambda c: c.__name__)
_base: list[type] = [_BASE]


@pytest.fixture(params=BASES, ids=lambda c: c.__name__)
def protocol_base(request: pytest.FixtureRequest) -> type:
    _base[0] = request.param
    return request.param  # type: ignore[no-any-return]


@asynccontextmanager
async def serving(
    head: float = 10.0, body: float = 30.0, most: int = 1000, keep_alive: float = 5.0
) -> AsyncIterator[int]:
    """The app under uvicorn with the guarded protocol; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    protocol = guarded_protocol(
        head_timeout=head, body_timeout=body, max_connections=most, base=_base[0]
    )
    config = uvicorn.Config(
        QuietDisconnects(APP),
        http=protocol,
        lifespan="off",
        log_config=None,
        ws="none",
        limit_concurrency=None,
        timeout_keep_alive=keep_alive,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn has no event
                await anyio.sleep(0.01)
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True


async def closed_by_server(stream: anyio.abc.ByteStream, within: float) -> bool:
    """Whether the server closes *stream* within *within* seconds."""
    with anyio.move_on_after(within):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return True
    return False


async def test_idle_sockets_do_not_lock_out_the_routes(protocol_base: type) -> None:
    async with serving(head=1.0) as port:
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(300)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(5):
                assert (await client.get("/status")).status_code == 200
        # ... and they are closed once the head deadline passed.
        with anyio.fail_after(30):
            assert await closed_by_server(idle[0], within=20)
            assert all([await closed_by_server(s, within=5) for s in idle[1:]])
        for stream in idle:
            await stream.aclose()


async def test_a_trickling_request_head_is_cut_off(protocol_base: type) -> None:
    async with serving(head=1.0) as port:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(b"GET /status HTTP/1.1\r\n")
        cut = False
        with anyio.fail_after(30):
            for _ in range(100):  # a header byte every 0.1 s, never finishing
                try:
                    await stream.send(b"X")
                except (anyio.BrokenResourceError, ConnectionError):
                    cut = True
                    break
                if await closed_by_server(stream, within=0.1):
                    cut = True
                    break
        await stream.aclose()
        assert cut


async def test_a_trickling_body_is_cut_off_but_a_whole_one_answers(
    protocol_base: type,
) -> None:
    async with serving(head=5.0, body=1.0) as port:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(
            b"POST /echo HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1000\r\n\r\nab"
        )
        with anyio.fail_after(30):
            assert await closed_by_server(stream, within=20)
        await stream.aclose()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answer = await client.post("/echo", content=b"x" * 100_000)
        assert answer.json() == {"bytes": 100_000}


async def test_keep_alive_requests_are_not_cut_by_the_head_deadline(
    protocol_base: type,
) -> None:
    async with (
        serving(head=0.3, keep_alive=30) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        for _ in range(3):
            assert (await client.get("/status")).status_code == 200
            await anyio.sleep(0.5)  # idle longer than the head deadline


async def test_a_body_finished_after_the_answer_leaves_no_idle_socket(
    protocol_base: type,
) -> None:
    # An answer before the whole body (a route that does not read it, a 401, a
    # 503): once the rest arrives, the connection must not stay open for ever.
    async with serving(head=1.0, body=1.0, keep_alive=1.0) as port:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(
            b"GET /status HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12345"
        )
        with anyio.fail_after(10):
            assert (await stream.receive()).startswith(b"HTTP/1.1 200")
        await anyio.sleep(0.2)
        await stream.send(b"67890")  # the rest of the body, in good time
        with anyio.fail_after(30):
            assert await closed_by_server(stream, within=20)
        await stream.aclose()


async def test_a_pipelined_body_is_not_timed_while_it_waits_its_turn(
    protocol_base: type,
) -> None:
    async with serving(head=5.0, body=1.0) as port:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(
            b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n"
        )
        await anyio.sleep(0.2)
        await stream.send(b"abcde")  # the body, 0.2 s after its head
        got = b""
        with anyio.fail_after(30):
            while got.count(b"HTTP/1.1 200") < 2 or not got.endswith(b"}"):
                got += await stream.receive()
        await stream.aclose()
        assert b'{"bytes":5}' in got


async def test_past_max_connections_a_connection_gets_503(protocol_base: type) -> None:
    async with serving(most=5) as port:
        held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(5)]
        await anyio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answer = await client.get("/status")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "too many connections" in answer.json()["error"]
        for stream in held:
            await stream.aclose()
        await anyio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/status")).status_code == 200


async def test_a_client_leaving_mid_body_logs_no_error(
    caplog: pytest.LogCaptureFixture, protocol_base: type
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with serving() as port:
            for _ in range(3):
                stream = await anyio.connect_tcp("127.0.0.1", port)
                await stream.send(
                    b"POST /echo HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                    b"content-length: 1000\r\n\r\nabc"
                )
                await anyio.sleep(0.1)
                await stream.aclose()
            await anyio.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert caplog.text.count("disconnected during POST /echo") == 3


def latest_step(logdir: Path) -> int:
    import tensorflow as tf

    path = tf.train.latest_checkpoint(str(logdir))
    return int(path.rsplit("-", 1)[1]) if path else 0


async def test_serve_on_another_loopback_address_answers_it(tmp_path: Path) -> None:
    args = ["--logdir", str(tmp_path / "run"), "--save-checkpoint-secs", "0.5"]
    async with serve_command(*args, host="127.0.0.2") as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as client:
            with anyio.fail_after(90):
                while True:
                    assert served.process.returncode is None, served.log()
                    try:
                        answer = await client.get("/status")
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.1)
        # --save-checkpoint-secs: a periodic checkpoint past step 0 before the
        # final one (600 s by default).
        with anyio.fail_after(60):
            while not await anyio.to_thread.run_sync(latest_step, tmp_path / "run"):  # noqa: ASYNC110
                await anyio.sleep(0.2)
        code = await served.stop()
    assert answer.status_code == 200, answer.text
    assert code == 0, served.log()
