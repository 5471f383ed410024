"""The service under abuse and crowds: the targets of issue #14, over real HTTP.

One server, the demo service (``asyncsess._serve_app.create_app``, training the
demo model in the background), is served by uvicorn from this process exactly as
``python -m asyncsess serve`` runs it (``asyncsess._serve.uvicorn_config``, with a
short ``--timeout-header``), on uvloop's loop when installed. The clients run in
other processes: the closed-loop load generator of ``_load.py``, and the
misbehaving clients below (``python -m benchmarks.bench_abuse client SPEC``,
plain asyncio sockets, nothing heavy imported). The phases run one after another:

- ``idle``: hundreds of sockets that send nothing, and a few that trickle a
  request head a byte a second, reconnecting whenever the server closes them,
  while a probe opens a fresh connection for ``GET /status`` every 0.1 s: the
  fraction of probes answered 200, and how long each idle socket stayed open.
- ``crowd``: 200 keep-alive clients in a closed loop, half ``GET /status``, half
  ``POST /predict`` with one row; training steps/s meanwhile over steps/s with
  no clients (rounds, in turns), the p99 of ``/status`` and every 503.
- ``refused``: clients sending bodies the service refuses (over the limit, a
  600 KB body of ``[]`` rows, malformed JSON, ...), one kind at a time, after
  a reference kind answered 200 (``GET /status``); every training step's time
  stamp (the trainer's ``_record`` wrapped), and the longest gap between two
  steps over the median gap with no clients. What `parse_rows` alone costs on
  each parsed body goes in the detail.
- ``disconnect``: clients that send a head with a Content-Length, part of the
  body, then leave (FIN or RST): ERROR records on the ``uvicorn.error`` and
  ``asyncsess`` loggers per such client.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import itertools
import json
import logging
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._harness import load, median, percentile, row, spread
from ._load import LoadRun, failures, fetch

if TYPE_CHECKING:
    from collections.abc import Callable


NAME = "abuse"

_HOSTS = ("127.0.0.1", "localhost")
_ROOT = Path(__file__).resolve().parent.parent
_ROW = [0.5, -1.0, 2.0, 0.0]
_PREDICT_BODY = json.dumps({"x": [_ROW]})
#: What each kind of request is answered (the demo's limits), for the detail column.
#: The first, a request answered 200, is the reference: what a cheap request costs
#: training while the clients' process competes for the CPU too.
_REFERENCE = "status_200"
_REFUSED_KINDS = {
    _REFERENCE: "GET /status, answered 200 (the reference, not refused)",
    "over_limit": "a declared Content-Length over the limit: 413 unread",
    "rows_600k": "600 KB of 200,000 [] rows: 413 by its Content-Length",
    "chunked_600k": "the same 600 KB chunked (no Content-Length): 413 while read",
    "rows_at_limit": "[] rows up to the body limit: parsed, 422 (too many rows)",
    "keys_at_limit": "unexpected keys up to the body limit: parsed, 422",
    "deep": "[ nested up to the body limit: 422 (nested too deeply)",
    "last_row_bad": "1024 rows, the last one holding a string: checked, 422",
    "malformed": "truncated JSON: 422",
}


@dataclass(frozen=True)
class Plan:
    """How long each phase runs."""

    #: Sockets that send nothing, and sockets that trickle a head byte a second.
    idle_sockets: int
    tricklers: int
    idle_seconds: float
    #: ``--timeout-header`` of the server (seconds).
    timeout_header: float
    rounds: int
    #: Seconds of training measured alone, and under the crowd, per round.
    alone_seconds: float
    crowd_seconds: float
    #: Seconds of each refused kind (two connections each).
    refused_seconds: float
    #: Seconds of steps recorded with no client, the refused phase's reference.
    quiet_seconds: float
    disconnects: int


QUICK = Plan(
    idle_sockets=200, tricklers=3, idle_seconds=6.0, timeout_header=3.0, rounds=1,
    alone_seconds=1.5, crowd_seconds=4.0, refused_seconds=0.6, quiet_seconds=1.5,
    disconnects=20,
)  # fmt: skip
FULL = Plan(
    idle_sockets=500, tricklers=5, idle_seconds=30.0, timeout_header=5.0, rounds=3,
    alone_seconds=3.0, crowd_seconds=10.0, refused_seconds=2.0, quiet_seconds=3.0,
    disconnects=100,
)  # fmt: skip
CROWD = 200
_WARMUP_S = 1.0
_PROBE_EVERY_S = 0.1
_PROBE_TIMEOUT_S = 5.0


# == the misbehaving clients (another process) ======================================


def _clock() -> float:
    # CLOCK_MONOTONIC on Linux: the server process reads the same clock.
    return time.perf_counter()


@dataclass
class _Held:
    """What the idle and trickling sockets saw."""

    expected: int = 0
    ramped: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    open: int = 0
    peak: int = 0
    least: int = 1 << 30
    closed_after: dict[str, list[float]] = field(
        default_factory=lambda: {"idle": [], "trickle": []}
    )
    still_open: dict[str, list[float]] = field(
        default_factory=lambda: {"idle": [], "trickle": []}
    )
    got_bytes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def _hold(port: int, held: _Held, kind: str) -> None:
    """One socket held open (sending nothing, or a head byte a second), for ever."""
    head = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096
    while not held.done:
        opened = _clock()  # before the server can see it: a lower bound
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            held.errors[f"connect {type(exc).__name__}"] += 1
            await asyncio.sleep(0.1)
            continue
        held.open += 1
        held.peak = max(held.peak, held.open)
        if held.open >= held.expected:
            held.ramped.set()
        trickle = None
        if kind == "trickle":
            trickle = asyncio.ensure_future(_trickle(writer, head))
        try:
            while data := await reader.read(1 << 16):
                held.got_bytes[kind] += len(data)
            if not held.done:
                held.closed_after[kind].append(_clock() - opened)
        except OSError as exc:
            if not held.done:
                held.closed_after[kind].append(_clock() - opened)
                held.errors[type(exc).__name__] += 1
        except asyncio.CancelledError:
            held.still_open[kind].append(_clock() - opened)
            raise
        finally:
            held.open -= 1
            if trickle is not None:
                trickle.cancel()
            writer.close()


async def _trickle(writer: asyncio.StreamWriter, head: bytes) -> None:
    for i in range(len(head)):
        writer.write(head[i : i + 1])
        await asyncio.sleep(1.0)


async def _probe(port: int) -> tuple[float, int, float]:
    """``GET /status`` on a fresh connection: (start, status or 0, seconds)."""
    start = _clock()
    try:
        status, _ = await asyncio.wait_for(
            fetch(port, "GET", "/status", ""), _PROBE_TIMEOUT_S
        )
    except (OSError, EOFError, ValueError, asyncio.TimeoutError):
        status = 0
    return start, status, _clock() - start


async def _client_idle(spec: dict[str, Any]) -> dict[str, Any]:
    port, held = spec["port"], _Held()
    tasks = [
        asyncio.ensure_future(_hold(port, held, kind))
        for kind, n in (("idle", spec["sockets"]), ("trickle", spec["tricklers"]))
        for _ in range(n)
    ]
    held.expected, ramp = len(tasks), _clock()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(held.ramped.wait(), 10.0)
    start = _clock()
    probes = []
    while _clock() - start < spec["seconds"]:
        probes.append(await _probe(port))
        held.least = min(held.least, held.open)
        await asyncio.sleep(max(0.0, _PROBE_EVERY_S - probes[-1][2]))
    end = _clock()
    held.done = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "window": [start, end],
        "ramp": start - ramp,
        "probes": probes,
        "peak": held.peak,
        "least": held.least,
        "closed_after": held.closed_after,
        "still_open": held.still_open,
        "got_bytes": dict(held.got_bytes),
        "errors": dict(held.errors),
    }


def _refused_request(kind: str, port: int, limit: int) -> bytes:
    """The bytes of one request of *kind* (`_REFUSED_KINDS`) to ``POST /predict``."""
    rows = b"[" + b",".join([b"[]"] * 200_000) + b"]"
    bodies = {
        "over_limit": b" " * (limit + 1),
        "rows_600k": b'{"x": ' + rows + b"}",
        "chunked_600k": b'{"x": ' + rows + b"}",
        "rows_at_limit": b'{"x": [' + b",".join([b"[]"] * ((limit - 10) // 3)) + b"]}",
        "keys_at_limit": b'{"x": [[0, 0, 0, 0]], '
        + b",".join(b'"k%d":0' % i for i in range(limit // 12))
        + b"}",
        "deep": b"[" * (limit - 1),
        "last_row_bad": json.dumps({"x": [_ROW] * 1023 + [[0, 0, 0, "a"]]}).encode(),
        "malformed": _PREDICT_BODY[:-3].encode(),
    }
    if kind == _REFERENCE:
        return f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    body = bodies[kind]
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "Content-Type: application/json\r\n"
    if kind != "chunked_600k":
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    step = 64 << 10
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + framed


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one answer: its status, and whether the server closes the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12]), b"connection: close" in head.lower()


async def _send_loop(
    port: int, request: bytes, until: float, seen: dict[str, Any]
) -> None:
    """Send *request* in a closed loop until *until*; reconnect when closed."""
    while _clock() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            seen["errors"][f"connect {type(exc).__name__}"] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while _clock() < until:
                start = _clock()
                writer.write(request)
                status, close = await _answer(reader)
                seen["statuses"][status] += 1
                seen["requests"].append((start, _clock()))
                if close:
                    break
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as exc:
            seen["errors"][type(exc).__name__] += 1
        finally:
            writer.close()


async def _client_refused(spec: dict[str, Any]) -> dict[str, Any]:
    port, limit = spec["port"], spec["limit"]
    got = {}
    for kind in spec["kinds"]:
        request = _refused_request(kind, port, limit)
        seen: dict[str, Any] = {
            "statuses": Counter(),
            "errors": Counter(),
            "requests": [],
        }
        start = _clock()
        until = start + spec["seconds"]
        await asyncio.gather(
            *(
                _send_loop(port, request, until, seen)
                for _ in range(spec["connections"])
            )
        )
        seen["window"] = [start, _clock()]
        seen["bytes"] = len(request)
        seen["statuses"] = {str(k): v for k, v in seen["statuses"].items()}
        seen["errors"] = dict(seen["errors"])
        got[kind] = seen
        await asyncio.sleep(0.2)  # the next kind's steps are its own
    return got


async def _leave_mid_body(port: int, path: str, rst: bool) -> None:
    """Send a head with Content-Length and part of its body, then disconnect."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    body = _PREDICT_BODY.encode() * 100
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[:100])
    await writer.drain()
    await asyncio.sleep(0.05)  # the app is reading the body by now
    if rst:  # an abrupt reset instead of a FIN
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def _client_disconnect(spec: dict[str, Any]) -> dict[str, Any]:
    port, n = spec["port"], spec["n"]
    paths = ("/predict", "/v1/models/demo:predict")
    errors: Counter[str] = Counter()
    for first in range(0, n, 10):
        got = await asyncio.gather(
            *(
                _leave_mid_body(port, paths[i % 2], rst=(i // 2) % 2 == 1)
                for i in range(first, min(n, first + 10))
            ),
            return_exceptions=True,
        )
        errors.update(type(e).__name__ for e in got if isinstance(e, BaseException))
    return {"n": n, "errors": dict(errors)}


_CLIENTS = {
    "idle": _client_idle,
    "refused": _client_refused,
    "disconnect": _client_disconnect,
}


async def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one misbehaving client process to its end; what it saw."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_abuse", "client", json.dumps(spec),
        cwd=_ROOT, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
    )  # fmt: skip
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
    if proc.returncode:
        raise RuntimeError(f"the {spec['mode']} client failed (exit {proc.returncode})")
    got: dict[str, Any] = json.loads(out.splitlines()[-1])
    return got


# == the server (this process) ======================================================


class StepLog:
    """Every training step's end and wall time (the trainer's ``_record``, wrapped)."""

    def __init__(self, trainer: Any) -> None:
        self.stamps: list[float] = []
        self.seconds: list[float] = []
        record = trainer._record

        def recorded(seconds: float, results: dict[str, Any]) -> None:
            self.stamps.append(time.perf_counter())
            self.seconds.append(seconds)
            record(seconds, results)

        trainer._record = recorded

    def _span(self, start: float, end: float) -> tuple[int, int]:
        return bisect.bisect_left(self.stamps, start), bisect.bisect_left(
            self.stamps, end
        )

    def gaps(self, start: float, end: float) -> list[float]:
        """Seconds between consecutive steps, of every gap overlapping the window."""
        first = max(1, bisect.bisect_right(self.stamps, start))
        last = bisect.bisect_left(self.stamps, end) + 1
        return [b - a for a, b in itertools.pairwise(self.stamps[first - 1 : last])]

    def rate(self, start: float, end: float) -> float:
        """Steps per second in the window."""
        first, last = self._span(start, end)
        return (last - first) / (end - start)

    def walls(self, start: float, end: float) -> list[float]:
        """The wall time the trainer measured of each step in the window."""
        first, last = self._span(start, end)
        return self.seconds[first:last]


class LogCount(logging.Handler):
    """Counts records by (logger, level) and keeps the ERROR ones' first lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[(record.name, record.levelname)] += 1
        if record.levelno >= logging.ERROR and len(self.errors) < 5:
            self.errors.append(f"{record.name}: {record.getMessage()[:120]}")

    def at_error(self) -> int:
        return sum(n for (_, level), n in self.counts.items() if level in _ERRORS)


_ERRORS = ("ERROR", "CRITICAL")
_LOGGERS = ("uvicorn.error", "asyncsess")


class GcPauses:
    """Full (generation 2) collections while inside the block: (start, seconds)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self._start = time.perf_counter()
            else:
                self.pauses.append((self._start, time.perf_counter() - self._start))

    def within(self, start: float, end: float) -> list[float]:
        return [took for at, took in self.pauses if start <= at < end]

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


async def _until(done: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- the phases ----------------------------------------------------------------------


async def _idle(port: int, plan: Plan, steps: StepLog) -> dict[str, Any]:
    got = await _spawn(
        {
            "mode": "idle",
            "port": port,
            "sockets": plan.idle_sockets,
            "tricklers": plan.tricklers,
            "seconds": plan.idle_seconds,
        }
    )
    got["steps_per_sec"] = steps.rate(*got["window"])
    return got


def _walls(walls: list[float]) -> dict[str, float]:
    """The trainer's step wall times: lower quartile, median, mean (ms)."""
    if len(walls) < 4:
        return {"q1": float("nan"), "median": float("nan"), "mean": float("nan")}
    q1 = statistics.quantiles(walls, n=4)[0]
    return {
        "q1": q1 * 1e3,
        "median": median(walls) * 1e3,
        "mean": statistics.fmean(walls) * 1e3,
    }


async def _sample_pace(pace: Any, into: list[tuple[float, float, int]]) -> None:
    """Every 50 ms: admission's rate (requests/step), its pace, requests waiting."""
    while True:
        into.append((pace.rate, pace.pace(), len(pace._waiters)))
        await asyncio.sleep(0.05)


async def _crowd_round(
    port: int, plan: Plan, steps: StepLog, trainer: Any
) -> dict[str, Any]:
    """Steps/s alone, then under the crowd (100 /status + 100 /predict clients)."""
    start = time.perf_counter()
    await asyncio.sleep(plan.alone_seconds)
    alone = (start, time.perf_counter())
    half, pace = CROWD // 2, trainer.pace
    refused = pace.refused
    samples: list[tuple[float, float, int]] = []
    runs = [
        await LoadRun.start(
            port, "/status", "", connections=half, method="GET",
            seconds=plan.crowd_seconds + 30, warmup=_WARMUP_S,
        ),
        await LoadRun.start(
            port, "/predict", _PREDICT_BODY, connections=half,
            seconds=plan.crowd_seconds + 30, warmup=_WARMUP_S,
        ),
    ]  # fmt: skip
    try:
        with GcPauses() as pauses:
            for run in runs:
                await run.wait_started()
            sampler = asyncio.ensure_future(_sample_pace(pace, samples))
            start, cpu = time.perf_counter(), time.process_time()
            await asyncio.sleep(plan.crowd_seconds)
            end = time.perf_counter()
            cpu = (time.process_time() - cpu) / (end - start)
            sampler.cancel()
            baseline, in_flight = pace.baseline * 1e3, pace.in_flight
            for run in runs:
                run.stop()
            drain = time.perf_counter()
            status, predict = [await run.result() for run in runs]
            drain = time.perf_counter() - drain
    finally:
        for run in runs:
            run.kill()
    return {
        "alone": steps.rate(*alone),
        "loaded": steps.rate(start, end),
        "walls": {
            "alone": _walls(steps.walls(*alone)),
            "loaded": _walls(steps.walls(start, end)),
        },
        "status": status,
        "predict": predict,
        "refused": pace.refused - refused,
        "samples": samples,
        "baseline_ms": baseline,
        "in_flight": in_flight,
        "server_cpu": cpu,
        "gc_pauses": [took for _, took in pauses.pauses],
        "drain": drain,
    }


def _parse_costs(limit: int) -> dict[str, tuple[float, float]]:
    """Seconds `parse_rows` takes on each parsed refused body: (least, most of 5).

    Run on the loop between phases, in the server's heap (frozen after startup),
    so that a full collection it sets off counts in the most.
    """
    from asyncsess._serve_app import Refused, parse_rows

    costs = {}
    for kind in ("rows_at_limit", "keys_at_limit", "deep", "last_row_bad"):
        body = _refused_request(kind, 0, limit).split(b"\r\n\r\n", 1)[1]
        took = []
        for _ in range(5):
            start = time.perf_counter()
            try:
                parse_rows(body, 4, 1024)
            except Refused:
                pass
            took.append(time.perf_counter() - start)
        costs[kind] = (min(took), max(took))
    return costs


async def _refused(port: int, plan: Plan, steps: StepLog, limit: int) -> dict[str, Any]:
    gc.collect()
    await asyncio.sleep(0.3)
    start = time.perf_counter()
    await asyncio.sleep(plan.quiet_seconds)
    quiet = steps.gaps(start, time.perf_counter())
    spec = {
        "mode": "refused",
        "port": port,
        "limit": limit,
        "kinds": list(_REFUSED_KINDS),
        "seconds": plan.refused_seconds,
        "connections": 2,
    }
    with GcPauses() as pauses:
        got = await _spawn(spec)
    for seen in got.values():
        seen["gaps"] = steps.gaps(*seen["window"])
        seen["gc_pauses"] = pauses.within(*seen["window"])
    return {"quiet": quiet, "kinds": got, "parse": _parse_costs(limit)}


async def _disconnects(port: int, plan: Plan, counted: LogCount) -> dict[str, Any]:
    counted.counts.clear()
    logger = logging.getLogger("asyncsess")
    level = logger.level
    logger.setLevel(logging.DEBUG)  # to count the one DEBUG line per client too
    try:
        got = await _spawn({"mode": "disconnect", "port": port, "n": plan.disconnects})
        await asyncio.sleep(1.0)  # the server notices the last ones leave
        status, _ = await fetch(port, "GET", "/status", "")
    finally:
        logger.setLevel(level)
    got["counts"] = {f"{name} {lvl}": n for (name, lvl), n in counted.counts.items()}
    got["errors_logged"] = counted.at_error()
    got["first_errors"] = list(counted.errors)
    got["status_after"] = status
    return got


async def _main(plan: Plan, logdir: str) -> dict[str, Any]:
    from asyncsess._serve import HTTPLimits
    from asyncsess._serve_app import create_app

    from .bench_serving import serving

    app = create_app(logdir, allowed_hosts=_HOSTS)
    trainer = app.state.trainer
    steps = StepLog(trainer)
    counted = LogCount()
    got: dict[str, Any] = {"limit": trainer.config.max_body_bytes}
    async with serving(app, HTTPLimits(timeout_header=plan.timeout_header)) as port:
        for name in _LOGGERS:  # after uvicorn configured its loggers
            logging.getLogger(name).addHandler(counted)
        try:
            await _until(lambda: trainer.global_step >= 200, "training to start")
            status, _ = await fetch(port, "POST", "/predict", _PREDICT_BODY)
            if status != 200:
                raise RuntimeError(f"POST /predict answered {status}")
            got["idle"] = await _idle(port, plan, steps), load()
            got["crowd"] = []
            for _ in range(plan.rounds):
                got["crowd"].append(await _crowd_round(port, plan, steps, trainer))
            got["crowd_load"] = load()
            got["refused"] = await _refused(port, plan, steps, got["limit"]), load()
            got["errors_before_disconnects"] = counted.at_error()
            got["first_errors"] = list(counted.errors)
            got["disconnect"] = await _disconnects(port, plan, counted), load()
        finally:
            for name in _LOGGERS:
                logging.getLogger(name).removeHandler(counted)
    if trainer.error is not None:
        raise RuntimeError(f"training failed: {trainer.error}")
    return got


# -- the rows ------------------------------------------------------------------------


def _loads(before: tuple[float, float, float], after: tuple[float, ...]) -> str:
    return f"load {before[0]:.2f}->{after[0]:.2f}"


def _idle_rows(got: dict[str, Any], plan: Plan, loads: str) -> list[dict[str, Any]]:
    probes = got["probes"]
    answered = sum(1 for _, status, _ in probes if status == 200)
    fraction = answered / len(probes) if probes else float("nan")
    lat = [took for _, status, took in probes if status == 200]
    statuses = Counter(str(status) for _, status, _ in probes)
    closed = got["closed_after"]
    idle, trickle = closed["idle"], closed["trickle"]
    held = idle + trickle
    still = got["still_open"]["idle"] + got["still_open"]["trickle"]
    timeout = plan.timeout_header
    longest = max(held + [s for s in still if s > timeout], default=float("nan"))
    common = (
        f"{plan.idle_sockets} idle + {plan.tricklers} trickling sockets (a head byte "
        f"a second), each reopened when closed, for {plan.idle_seconds:.0f} s "
        f"(open at once: {got['least']}..{got['peak']}; ramp {got['ramp']:.1f} s); "
        f"--timeout-header {timeout:g} s; training meanwhile "
        f"{got['steps_per_sec']:.0f} steps/s; {loads}"
    )
    closed_ok = bool(held) and min(held) >= timeout - 0.05 and longest <= timeout + 1
    return [
        row(
            "GET /status answered 200 while idle/trickling sockets are held open",
            fraction, "x", "= 1.0", fraction == 1.0,
            f"{answered} of {len(probes)} probes, each on a fresh connection every "
            f"{_PROBE_EVERY_S:g} s (timeout {_PROBE_TIMEOUT_S:g} s; 0: no answer): "
            f"{dict(statuses)}; their p99 {percentile(lat, 99) * 1e3:.1f} ms, max "
            f"{max(lat, default=float('nan')) * 1e3:.1f} ms; {common}",
        ),
        row(
            "idle/trickling sockets closed after (longest)",
            longest, "s", f"the head timeout ({timeout:g} s, +1 s slack)", closed_ok,
            f"{len(idle)} idle closes: {spread(idle)} s (median "
            f"{median(idle):.2f}); {len(trickle)} trickling: {spread(trickle)} s; "
            f"open at the end (< timeout): {len(still)}; bytes the server sent "
            f"them: {got['got_bytes'] or 0}; client errors {got['errors']}; {common}",
        ),
    ]  # fmt: skip


def _crowd_rows(
    rounds: list[dict[str, Any]], plan: Plan, loads: str
) -> list[dict[str, Any]]:
    ratios = [r["loaded"] / r["alone"] for r in rounds]
    value = median(ratios)
    lat = [x for r in rounds for x in r["status"]["latencies"]]
    plat = [x for r in rounds for x in r["predict"]["latencies"]]
    secs = sum(r["status"]["seconds"] for r in rounds)
    fives = sum(
        int(r[k]["statuses"].get("503", 0))
        for r in rounds
        for k in ("status", "predict")
    )
    bad = {k: sum(failures(r[k]) for r in rounds) for k in ("status", "predict")}
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in rounds:
        for k in ("status", "predict"):
            statuses.update(r[k]["statuses"])
            errors.update(r[k]["errors"])
    refused = sum(r["refused"] for r in rounds)
    pauses = [x for r in rounds for x in r["gc_pauses"]]
    common = (
        f"{CROWD} keep-alive clients in a closed loop ({CROWD // 2} GET /status, "
        f"{CROWD // 2} POST /predict of 1 row, two load-generator processes), "
        f"{plan.rounds} rounds x {plan.crowd_seconds:g} s after a {_WARMUP_S:g} s "
        f"warm-up, alone {plan.alone_seconds:g} s before each; {loads}"
    )
    answered = (
        f"answered 200/s: /status {len(lat) / secs:.0f}, /predict "
        f"{len(plat) / secs:.0f}"
    )
    admission = "; ".join(_admission(i, r) for i, r in enumerate(rounds))
    p99 = percentile(lat, 99) * 1e3
    return [
        row(
            f"training steps/s under {CROWD} clients (50/50 /status, /predict) / alone",
            value, "x", ">= 0.5", value >= 0.5,
            f"median of per-round ratios, range {spread(ratios)}; steps/s alone "
            f"{median([r['alone'] for r in rounds]):.0f}, under the crowd "
            f"{median([r['loaded'] for r in rounds]):.0f}; {answered}; admission "
            f"control per round: {admission}; {common}",
        ),
        row(
            f"GET /status p99 at {CROWD} clients",
            p99, "ms", "report", None,
            f"{len(lat)} answers pooled: median {median(lat) * 1e3:.1f} ms, max "
            f"{max(lat, default=float('nan')) * 1e3:.0f} ms; /predict p99 "
            f"{percentile(plat, 99) * 1e3:.1f} ms; full GC pauses meanwhile "
            f"{len(pauses)}, longest {max(pauses, default=0) * 1e3:.0f} ms; {common}",
        ),
        row(
            f"503 answers at {CROWD} clients (below the 1000-connection limit)",
            fives, "requests", "0", fives == 0,
            f"every answer other than 200 of the whole runs: {dict(statuses)}, "
            f"connection errors {dict(errors)} (by route {bad}); admission control "
            f"refused {refused} after waiting 10 s; {answered}; {common}",
        ),
    ]  # fmt: skip


def _admission(i: int, r: dict[str, Any]) -> str:
    """What admission control did in one round, and the step times it compared."""
    rates = [rate for rate, _, _ in r["samples"]]
    paces = [p for _, p, _ in r["samples"]]
    waiting = [w for _, _, w in r["samples"]]
    floor = sum(1 for x in rates if x <= 1 / 16 + 1e-9) / max(1, len(rates))
    alone, loaded = r["walls"]["alone"], r["walls"]["loaded"]
    return (
        f"round {i}: rate (requests/step) median {median(rates):.3g}, at its "
        f"1/16 floor {floor:.0%} of the time; its pace estimate median "
        f"{median(paces):.2f}; waiting median {median(waiting):.0f}, most "
        f"{max(waiting, default=0)}; its baseline step {r['baseline_ms']:.2f} ms; "
        f"step wall times (q1/median/mean ms) alone {alone['q1']:.2f}/"
        f"{alone['median']:.2f}/{alone['mean']:.2f}, under the crowd "
        f"{loaded['q1']:.2f}/{loaded['median']:.2f}/{loaded['mean']:.2f}; server "
        f"CPU {r['server_cpu']:.2f} cores; the crowd drained in {r['drain']:.1f} s"
    )


def _refused_row(
    got: dict[str, Any], plan: Plan, loads: str, limit: int
) -> dict[str, Any]:
    quiet = got["quiet"]
    step = median(quiet)
    worst = {
        k: max(s["gaps"], default=float("nan")) / step for k, s in got["kinds"].items()
    }
    value = max(v for k, v in worst.items() if k != _REFERENCE)
    per_kind = "; ".join(
        f"{kind} ({_REFUSED_KINDS[kind]}, {s['bytes'] / 1024:.0f} KiB): "
        f"{sum(s['statuses'].values())} answered {s['statuses']}"
        f"{', errors ' + str(s['errors']) if s['errors'] else ''}, longest gap "
        f"{worst[kind]:.1f} steps, p99 gap "
        f"{percentile(s['gaps'], 99) / step:.1f}, full GCs {len(s['gc_pauses'])}"
        f"{_longest(s['gc_pauses'])}{_parse_cost(got['parse'].get(kind))}"
        for kind, s in got["kinds"].items()
    )
    return row(
        "longest training stall during refused requests / median idle step",
        value, "x", "<= 2", value <= 2,
        f"gaps between consecutive training steps (time stamps from the trainer's "
        f"_record) while 2 connections per kind send it in a closed loop for "
        f"{plan.refused_seconds:g} s, kinds one after another (the first a "
        f"reference answered 200, not in the value); median idle gap "
        f"{step * 1e3:.2f} ms ({1 / step:.0f} steps/s); with no client at all over "
        f"{plan.quiet_seconds:g} s the longest gap was {max(quiet) / step:.1f} "
        f"steps, p99 {percentile(quiet, 99) / step:.1f}, p99.9 "
        f"{percentile(quiet, 99.9) / step:.1f}; body limit {limit} bytes; "
        f"{per_kind}; {loads}",
    )  # fmt: skip


def _longest(pauses: list[float]) -> str:
    return f" (longest {max(pauses) * 1e3:.0f} ms)" if pauses else ""


def _parse_cost(cost: tuple[float, float] | None) -> str:
    if cost is None:
        return ""
    return f", parse_rows alone {cost[0] * 1e3:.2f}..{cost[1] * 1e3:.2f} ms"


def _disconnect_row(
    got: dict[str, Any], errors_before: int, first: list[str], loads: str
) -> dict[str, Any]:
    n = got["n"]
    value = got["errors_logged"] / n
    return row(
        "ERROR log records per client disconnecting mid-body",
        value, "lines", "0", value == 0,
        f"{n} clients, each sending a head with Content-Length and 100 bytes of "
        f"its body, leaving 50 ms later (half POST /predict, half POST "
        f"/v1/models/demo:predict; half FIN, half RST); records on "
        f"{' and '.join(_LOGGERS)} meanwhile: {got['counts'] or 'none'}; "
        f"first ERROR lines {got['first_errors'] or 'none'}; client errors "
        f"{got['errors'] or 'none'}; GET /status after: {got['status_after']}; ERROR "
        f"records over the benchmark's other phases: {errors_before}"
        f"{' ' + str(first) if first else ''}; {loads}",
    )  # fmt: skip


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The issue #14 targets: idle sockets, a crowd, refused bodies, disconnects."""
    plan = QUICK if quick else FULL
    before = load()
    with tempfile.TemporaryDirectory(prefix="bench_abuse_") as logdir:
        from .bench_serving import run_on_serve_loop

        got = run_on_serve_loop(_main(plan, logdir))
    idle, idle_load = got["idle"]
    rows = _idle_rows(idle, plan, _loads(before, idle_load))
    rows += _crowd_rows(got["crowd"], plan, _loads(idle_load, got["crowd_load"]))
    refused, refused_load = got["refused"]
    rows.append(
        _refused_row(
            refused, plan, _loads(got["crowd_load"], refused_load), got["limit"]
        )
    )
    gone, gone_load = got["disconnect"]
    rows.append(
        _disconnect_row(
            gone, got["errors_before_disconnects"], got["first_errors"],
            _loads(refused_load, gone_load),
        )
    )  # fmt: skip
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        spec = json.loads(sys.argv[2])
        print(json.dumps(asyncio.run(_CLIENTS[spec["mode"]](spec))), flush=True)
    else:
        for r in run(quick="--full" not in sys.argv):
            print(r)
