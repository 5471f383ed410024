"""Running ``python -m asyncsess serve`` in a subprocess, for the CLI tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, on *host*."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServeProcess:
    """A running ``serve`` command: its process, its URL and what it wrote."""

    process: Any
    url: str
    errors: list[bytes] = field(default_factory=list)

    async def drain(self) -> None:
        assert self.process.stderr is not None
        self.errors.extend([chunk async for chunk in self.process.stderr])

    def log(self) -> str:
        """What the command wrote to stderr so far."""
        return b"".join(self.errors).decode(errors="replace")

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send *signum* and wait (at most a minute) for the exit status."""
        self.process.send_signal(signum)
        with anyio.fail_after(60):
            code: int = await self.process.wait()
        return code


@asynccontextmanager
async def serve_command(
    *args: str, host: str = "127.0.0.1", env: dict[str, str] | None = None
) -> AsyncIterator[ServeProcess]:
    """``python -m asyncsess serve ARGS --host HOST --port P`` on a free port."""
    port = free_port(host)
    command = [sys.executable, "-m", "asyncsess", "serve", *args]
    command += ["--host", host, "--port", str(port)]
    process = await anyio.open_process(
        command,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    served = ServeProcess(process, f"http://{host}:{port}")
    async with process, anyio.create_task_group() as tg:
        tg.start_soon(served.drain)
        yield served


@asynccontextmanager
async def over_http(app: Any, **client: Any) -> AsyncIterator[Any]:
    """Serve *app* with uvicorn on 127.0.0.1 (a free port) in this process.

    Yields an ``httpx.AsyncClient`` for it; asyncio only (uvicorn's loop).
    """
    import httpx
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_config=None, ws="none", http="h11")
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(60):
                while not server.started:  # noqa: ASYNC110 - uvicorn has no event
                    await anyio.sleep(0.02)
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, trust_env=False, **client) as c:
                try:
                    yield c
                finally:
                    server.should_exit = True
    finally:
        sock.close()
