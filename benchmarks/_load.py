"""A closed-loop HTTP/1.1 load generator, run in a process of its own.

``python benchmarks/_load.py SPEC`` (SPEC a JSON object: ``port``, ``method``,
``path``, ``body``, ``connections``, ``warmup``, ``seconds``) opens that many
keep-alive connections to 127.0.0.1 and sends the request on each as soon as the
previous answer is read (a closed loop: one request in flight per connection).
After the warm-up it prints ``start``, measures for ``seconds`` (or until a
line comes on its stdin), prints ``stop``, then one JSON line: answers and
latencies of the measured window and failures of the whole run (status codes
other than 200, connection errors).

The client is a hand-written minimal one (write the request's bytes, read the
status line and headers, then Content-Length bytes of body) on asyncio streams:
far cheaper per request than an HTTP library, so that on a small machine the
server, not the client, is what is measured. It imports nothing heavy.

`LoadRun` starts it from the benchmark's event loop (asyncio) and reads what it
prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_HEAD_END = b"\r\n\r\n"
_SCRIPT = os.path.abspath(__file__)


@dataclass
class _Tally:
    """What the connections saw; ``window`` is the measured one's bounds."""

    window: tuple[float, float] = (float("inf"), float("inf"))
    latencies: list[float] = field(default_factory=list)
    ok_all: int = 0
    #: Answers (200, in the window) per connection: how fair the server is.
    per_client: Counter[int] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    done: bool = False

    def answered(self, status: int, start: float, end: float, client: int) -> None:
        if status == 200:
            self.ok_all += 1
            if self.window[0] <= end < self.window[1]:
                self.latencies.append(end - start)
                self.per_client[client] += 1
        else:
            self.statuses[status] += 1


def _request(spec: dict[str, Any]) -> bytes:
    body: bytes = spec["body"].encode()
    head = (
        f"{spec['method']} {spec['path']} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{spec['port']}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    raise ValueError("an answer without Content-Length")


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _client(port: int, request: bytes, tally: _Tally, client: int) -> None:
    """One connection's closed loop; reconnects after an error until done."""
    clock = time.perf_counter
    while not tally.done:
        writer = None
        try:
            reader, writer = await _connect(port)
            while not tally.done:
                start = clock()
                writer.write(request)
                head = await reader.readuntil(_HEAD_END)
                await reader.readexactly(_content_length(head))
                tally.answered(int(head[9:12]), start, clock(), client)
                if b"connection: close" in head.lower():
                    break
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            if not tally.done:
                tally.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
        finally:
            if writer is not None:
                writer.close()


async def _told_to_stop() -> None:
    """Returns when a line (or the end) comes on stdin: `LoadRun.stop`."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    await reader.readline()


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    tally = _Tally()
    request = _request(spec)
    clients = [
        asyncio.create_task(_client(spec["port"], request, tally, i))
        for i in range(spec["connections"])
    ]
    await asyncio.sleep(spec["warmup"])
    start, cpu = time.perf_counter(), time.process_time()
    tally.window = (start, start + spec["seconds"])
    print("start", flush=True)
    told = asyncio.create_task(_told_to_stop())
    await asyncio.wait([told], timeout=spec["seconds"])
    told.cancel()
    end = min(time.perf_counter(), tally.window[1])
    tally.window = (start, end)
    cpu = time.process_time() - cpu
    print("stop", flush=True)
    tally.done = True
    await asyncio.wait(clients, timeout=30.0)
    return {
        "seconds": end - start,
        "client_cpu": cpu / (end - start),  # of one core
        "latencies": [round(x, 7) for x in tally.latencies],
        "ok_all": tally.ok_all,
        "per_client": [tally.per_client[i] for i in range(spec["connections"])],
        "statuses": {str(k): v for k, v in tally.statuses.items()},
        "errors": dict(tally.errors),
    }


# -- the benchmark's side ------------------------------------------------------------


class LoadRun:
    """The load generator's process, driven from an asyncio event loop.

    ``await LoadRun.start(...)`` spawns it; `started` and `stopped` are set when
    it prints ``start`` and ``stop`` (its measured window, on this side's clock:
    `window`; `wait_started` and `wait_stopped` wait for them); `result` waits
    for its JSON.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.window = [float("nan"), float("nan")]
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        port: int,
        path: str,
        body: str,
        *,
        connections: int,
        seconds: float,
        warmup: float,
        method: str = "POST",
    ) -> LoadRun:
        spec = {
            "port": port,
            "method": method,
            "path": path,
            "body": body,
            "connections": connections,
            "warmup": warmup,
            "seconds": seconds,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            _SCRIPT,
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,  # the result is one long line
        )
        return cls(proc)

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            if line == b"start\n":
                self.window[0] = time.perf_counter()
                self.started.set()
            elif line == b"stop\n":
                self.window[1] = time.perf_counter()
                self.stopped.set()
            else:
                got: dict[str, Any] = json.loads(line)
                return got
        raise RuntimeError(
            f"the load generator ended without a result (exit {await self.proc.wait()})"
        )

    async def wait_started(self) -> None:
        """Until the measured window opens (raises if the process failed first)."""
        await self._until(self.started)

    async def wait_stopped(self) -> None:
        """Until the measured window ends (raises if the process failed first)."""
        await self._until(self.stopped)

    async def _until(self, event: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.wait([waiter, self._reading], return_when=asyncio.FIRST_COMPLETED)
        if not event.is_set():
            waiter.cancel()
            await self._reading  # raises what went wrong
            raise RuntimeError("the load generator answered before its window ended")

    def stop(self) -> None:
        """End the measured window now (before its ``seconds`` ran out)."""
        assert self.proc.stdin is not None
        if not self.stopped.is_set():
            self.proc.stdin.write(b"stop\n")

    def kill(self) -> None:
        """End the process now if it still runs (after an error on this side)."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def result(self) -> dict[str, Any]:
        """What the load generator measured (raises if it failed)."""
        got = await self._reading
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()
        return got


async def fetch(port: int, method: str, path: str, body: str) -> tuple[int, bytes]:
    """One request on a connection of its own: the status and the body."""
    reader, writer = await _connect(port)
    try:
        request = _request({"method": method, "path": path, "body": body, "port": port})
        writer.write(request)
        head = await reader.readuntil(_HEAD_END)
        return int(head[9:12]), await reader.readexactly(_content_length(head))
    finally:
        writer.close()


def failures(result: dict[str, Any]) -> int:
    """Answers other than 200 plus connection errors, over the whole run."""
    counts = [*result["statuses"].values(), *result["errors"].values()]
    return sum(int(n) for n in counts)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(json.loads(sys.argv[1])))), flush=True)
