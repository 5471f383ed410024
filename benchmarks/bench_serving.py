"""Serving over real HTTP: batching, the HTTP ceiling, training beside it, a swap.

Every server is a Starlette app served by uvicorn on 127.0.0.1 from this process
(its asyncio loop); the clients are the load generator of ``_load.py``, in a
process of its own: 64 keep-alive connections in a closed loop (each sends its
next request as soon as its answer is read), measured for a fixed time after a
warm-up. The model is a small MLP (``_mlp.py``) exported by Keras 3's
``model.export``; each request is one row in TensorFlow Serving's row format.

- ``throughput``: ``asyncsess._model_server.create_model_app`` over the MLP, one
  app with batching (the CLI's defaults: 32 rows, 1 ms), one without (one step
  per request), and a no-op JSON route added to the batched app (reads and
  parses the body, answers a body as long as a prediction's: the HTTP ceiling
  of that server). The three take turns in rounds; figures are medians of
  per-round ratios of requests/s, and the p99 latency of the batched app.
- ``lone``: one connection, one request at a time, batching on and off.
- ``training``: the ``serve MODULE:FACTORY`` service
  (``asyncsess._serve_factory.create_factory_app``) training the same MLP while
  it serves it; steps/s while 64 clients call ``POST /predict`` over steps/s
  with no requests, in turns.
- ``swap``: a base path with version 1 while 64 clients predict; version 2 (a
  folder written beforehand, renamed in) appears, is loaded and swapped in;
  the run ends a second after it serves. Every answer other than 200 and every
  connection error of the whole run is counted.

Full collections of the garbage collector (``GcPauses``) and the CPU used by
this process and by the load generator go in the rows' details: with
TensorFlow imported, a full collection stops the loop for a long while.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import tensorflow as tf
import uvicorn
from starlette.responses import Response
from starlette.routing import Route

from asyncsess._model_server import create_model_app
from asyncsess._serve import HTTPLimits, uvicorn_config
from asyncsess._serve_factory import create_factory_app

from . import _mlp
from ._harness import load, median, percentile, row, spread
from ._load import LoadRun, failures, fetch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.applications import Starlette
    from starlette.requests import Request

NAME = "serving"
T = TypeVar("T")
v1 = tf.compat.v1

CLIENTS = 64
_HOSTS = ("127.0.0.1", "localhost")
_MODEL = "mlp"
_PREDICT = f"/v1/models/{_MODEL}:predict"
_NOOP = "/noop"
_WARMUP_S = 0.5
#: Seconds of the swap's load before version 2 appears, and after it serves.
_BEFORE_SWAP_S, _AFTER_SWAP_S = 0.5, 1.0


@dataclass(frozen=True)
class Plan:
    """How long each part runs."""

    rounds: int
    #: Seconds of each contender's 64-client run.
    seconds: float
    #: Seconds of each contender's one-client run.
    lone_seconds: float
    #: Seconds of training measured, alone and under load, per round.
    train_seconds: float
    #: Most seconds of the swap's run (it ends a second after version 2 serves).
    swap_seconds: float


QUICK = Plan(
    rounds=1, seconds=1.0, lone_seconds=0.5, train_seconds=1.5, swap_seconds=20
)
FULL = Plan(rounds=5, seconds=3.0, lone_seconds=2.0, train_seconds=3.0, swap_seconds=20)


# -- serving an app from this process --------------------------------------------------


@asynccontextmanager
async def serving(
    app: Starlette, limits: HTTPLimits | None = None
) -> AsyncIterator[int]:
    """Serve *app* with uvicorn on 127.0.0.1 inside the block; its port."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # Exactly as `python -m asyncsess serve` runs it (protocol, limits, wrapper);
    # the loop is the benchmark's own (uvloop when installed: see `_run`).
    config = uvicorn_config(app, "127.0.0.1", 0, limits, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


def _body() -> str:
    return json.dumps({"instances": [_mlp.instance()]})


def _factory_body() -> str:
    return json.dumps({"inputs": {"x": [_mlp.instance()]}})


async def _check(port: int, path: str, body: str) -> bytes:
    """One request that must answer 200; its body."""
    status, answer = await fetch(port, "POST", path, body)
    if status != 200:
        raise RuntimeError(f"POST {path} answered {status}: {answer[:300]!r}")
    return answer


def add_noop_route(app: Starlette, answer: dict[str, bytes]) -> None:
    """``POST /noop`` on *app*: parse the JSON body, answer ``answer["body"]``."""

    async def noop(request: Request) -> Response:
        json.loads(await request.body())
        return Response(answer["body"], media_type="application/json")

    app.router.routes.insert(0, Route(_NOOP, noop, methods=["POST"]))


class GcPauses:
    """The collector's full (generation 2) collections while inside the block, seconds.

    With TensorFlow imported a process holds some 300 000 objects, so a full
    collection stops the event loop for a while: the tail of the latencies.
    """

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._start)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


async def _batch_counts(port: int) -> tuple[float, float]:
    """``asyncsess_batches_total`` and ``asyncsess_batched_rows_total`` of a server."""
    _, text = await fetch(port, "GET", "/metrics", "")
    values = {}
    for line in text.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("asyncsess_batches_total", "asyncsess_batched_rows_total"):
            values[name] = float(value)
    return values["asyncsess_batches_total"], values["asyncsess_batched_rows_total"]


async def measured(
    port: int,
    path: str,
    body: str,
    *,
    connections: int,
    seconds: float,
    warmup: float = _WARMUP_S,
    mark: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """The load generator's result, with what this process did meanwhile.

    Adds ``server_cpu`` (this process's CPU time over the measured window, in
    cores), ``gc_pauses`` and ``marks``: ``mark()`` at the window's start and end.
    """
    run = await LoadRun.start(
        port, path, body, connections=connections, seconds=seconds, warmup=warmup
    )
    try:
        with GcPauses() as pauses:
            await run.wait_started()
            cpu, first = time.process_time(), mark() if mark else None
            await run.wait_stopped()
            cpu, last = time.process_time() - cpu, mark() if mark else None
            got = await run.result()
    finally:
        run.kill()
    got["server_cpu"] = cpu / (run.window[1] - run.window[0])
    got["gc_pauses"] = pauses.pauses
    got["marks"] = (first, last)
    got["window"] = run.window[1] - run.window[0]
    return got


async def _rounds(
    names: list[str], rounds: int, one: Callable[[str], Awaitable[T]]
) -> dict[str, list[T]]:
    """``one(name)`` for each name, per round, the order rotated each round."""
    got: dict[str, list[T]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            got[name].append(await one(name))
    return got


async def _until(done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- the model's own step cost (no HTTP) -----------------------------------------------


def step_costs(model_dir: str) -> dict[int, float]:
    """Seconds of one ``Session.run`` of the SavedModel: 1 and 32 rows, best of 5."""
    costs = {}
    logger, level = tf.get_logger(), tf.get_logger().level
    with tf.Graph().as_default(), v1.Session() as sess:
        logger.setLevel("ERROR")  # the TF1 loader's deprecation notice
        try:
            meta = v1.saved_model.loader.load(sess, ["serve"], model_dir)
        finally:
            logger.setLevel(level)
        signature = meta.signature_def["serving_default"]
        (x,) = (t.name for t in signature.inputs.values())
        (y,) = (t.name for t in signature.outputs.values())
        call = sess.make_callable(y, [x])
        for rows in (1, 32):
            batch = np.tile(np.asarray(_mlp.instance(), np.float32), (rows, 1))
            for _ in range(20):
                call(batch)
            best = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(20):
                    call(batch)
                best.append((time.perf_counter() - start) / 20)
            costs[rows] = min(best)
    return costs


# -- throughput and lone latency -------------------------------------------------------


async def _http(model_dir: str, plan: Plan) -> dict[str, Any]:
    batched = create_model_app(
        model_dir, model_name=_MODEL, batching=True, allowed_hosts=_HOSTS
    )
    answer: dict[str, bytes] = {}
    add_noop_route(batched, answer)
    unbatched = create_model_app(
        model_dir, model_name=_MODEL, batching=False, allowed_hosts=_HOSTS
    )
    body = _body()
    async with serving(batched) as on, serving(unbatched) as off:
        answer["body"] = await _check(on, _PREDICT, body)
        await _check(off, _PREDICT, body)
        await _check(on, _NOOP, body)
        targets = {"batched": (on, _PREDICT), "unbatched": (off, _PREDICT)}
        targets["noop"] = (on, _NOOP)

        async def loaded(name: str) -> dict[str, Any]:
            port, path = targets[name]
            before = await _batch_counts(on)
            got = await measured(
                port, path, body, connections=CLIENTS, seconds=plan.seconds
            )
            after = await _batch_counts(on)
            got["batch"] = (after[1] - before[1]) / max(1.0, after[0] - before[0])
            return got

        async def lone(name: str) -> dict[str, Any]:
            port, path = targets[name]
            return await measured(
                port, path, body, connections=1, seconds=plan.lone_seconds,
                warmup=0.2,
            )  # fmt: skip

        many = await _rounds(["batched", "unbatched", "noop"], plan.rounds, loaded)
        one = await _rounds(["batched", "unbatched"], plan.rounds, lone)
    return {"many": many, "one": one, "answer_bytes": len(answer["body"])}


def _rps(result: dict[str, Any]) -> float:
    return len(result["latencies"]) / float(result["seconds"])


def _http_rows(
    got: dict[str, Any], plan: Plan, costs: dict[int, float], loads: str
) -> list[dict[str, Any]]:
    many, one = got["many"], got["one"]
    rps = {name: [_rps(r) for r in runs] for name, runs in many.items()}
    vs_one = [a / b for a, b in zip(rps["batched"], rps["unbatched"], strict=True)]
    vs_noop = [a / b for a, b in zip(rps["batched"], rps["noop"], strict=True)]
    pooled = [x for r in many["batched"] for x in r["latencies"]]
    pauses = [x for r in many["batched"] for x in r["gc_pauses"]]
    batch = median([r["batch"] for r in many["batched"]])
    p99s = [percentile(r["latencies"], 99) * 1e3 for r in many["batched"]]
    lone = {n: [median(r["latencies"]) for r in runs] for n, runs in one.items()}
    lone_ratio = [
        a / b for a, b in zip(lone["batched"], lone["unbatched"], strict=True)
    ]
    bad = {name: sum(failures(r) for r in runs) for name, runs in many.items()}
    model = (
        f"{_mlp.describe()}, Keras 3 export; a Session.run of it takes "
        f"{costs[1] * 1e3:.2f} ms for 1 row, {costs[32] * 1e3:.2f} ms for 32"
    )
    common = (
        f"{plan.rounds} rounds x {plan.seconds:.1f} s, {CLIENTS} keep-alive clients "
        f"in a closed loop, 1 row per request; {model}; load {loads}"
    )
    med = {name: median(values) for name, values in rps.items()}
    absolute = (
        f"req/s (medians): batched {med['batched']:.0f}, one step per request "
        f"{med['unbatched']:.0f}, no-op route {med['noop']:.0f}"
    )
    cpu = {n: median([r["server_cpu"] for r in runs]) for n, runs in many.items()}
    client = max(r["client_cpu"] for runs in many.values() for r in runs)
    cpus = (
        f"CPU of the server process (cores, medians): batched {cpu['batched']:.2f}, "
        f"one step per request {cpu['unbatched']:.2f}, no-op {cpu['noop']:.2f}; "
        f"the load generator's at most {client:.2f}"
    )
    fails = f"not 200 or errors: {bad}"
    r1, r2, r4 = median(vs_one), median(vs_noop), median(lone_ratio)
    p99 = percentile(pooled, 99) * 1e3
    return [
        row(
            f"predict req/s, {CLIENTS} clients over HTTP: batched / "
            "one step per request",
            r1, "x", ">= 5", r1 >= 5,
            f"median of per-round ratios, range {spread(vs_one)}; {absolute}; "
            f"{cpus}; {fails}; {common}",
        ),
        row(
            f"predict req/s, {CLIENTS} clients over HTTP: batched / no-op JSON route",
            r2, "x", ">= 0.5", r2 >= 0.5,
            f"median of per-round ratios, range {spread(vs_noop)}; the no-op route "
            f"parses the body and answers {got['answer_bytes']} bytes (a "
            f"prediction's); {absolute}; {cpus}; {common}",
        ),
        row(
            f"predict p99 latency, {CLIENTS} clients, batched",
            p99, "ms", "< 50 ms", p99 < 50 and bad["batched"] == 0,
            f"all rounds' answers pooled ({len(pooled)}); per-round p99 "
            f"{spread(p99s)} ms, median {median(pooled) * 1e3:.2f} ms, max "
            f"{max(pooled) * 1e3:.1f} ms; full GC pauses in the server meanwhile: "
            f"{len(pauses)}, longest {max(pauses, default=0) * 1e3:.0f} ms; "
            f"mean batch {batch:.1f} rows; {common}",
        ),
        row(
            "a lone request's latency: batching on / off",
            r4, "x", "<= 1.2", r4 <= 1.2,
            f"one client, one request at a time, {plan.rounds} rounds x "
            f"{plan.lone_seconds:.1f} s; median latency on "
            f"{median(lone['batched']) * 1e3:.2f} ms, off "
            f"{median(lone['unbatched']) * 1e3:.2f} ms; per-round ratios "
            f"{spread(lone_ratio)}; {model}",
        ),
    ]  # fmt: skip


# -- training while serving ------------------------------------------------------------


async def _training(logdir: str, plan: Plan) -> dict[str, list[Any]]:
    app = create_factory_app(
        "benchmarks._mlp:trainer", logdir=logdir, allowed_hosts=_HOSTS
    )
    trainer = app.state.trainer
    body = _factory_body()
    async with serving(app) as port:
        await _until(lambda: trainer.global_step >= 20, "training to start")
        await _check(port, "/predict", body)

        async def alone() -> tuple[float, int, float, float]:
            start, step = time.perf_counter(), trainer.global_step
            cpu = time.process_time()
            await asyncio.sleep(plan.train_seconds)
            took = time.perf_counter() - start
            cpu = (time.process_time() - cpu) / took
            return (trainer.global_step - step) / took, 0, 0.0, cpu

        def mark() -> tuple[int, int, int]:
            stats = trainer.batch_stats
            return trainer.global_step, stats.batches, stats.rows

        async def loaded() -> tuple[float, int, float, float]:
            got = await measured(
                port, "/predict", body, connections=CLIENTS,
                seconds=plan.train_seconds, mark=mark,
            )  # fmt: skip
            (step0, batches0, rows0), (step1, batches1, rows1) = got["marks"]
            batch = (rows1 - rows0) / max(1, batches1 - batches0)
            rate = (step1 - step0) / got["window"]
            return rate, len(got["latencies"]), batch, got["server_cpu"]

        async def one(name: str) -> tuple[float, int, float, float]:
            return await (alone() if name == "alone" else loaded())

        got = await _rounds(["alone", "loaded"], plan.rounds, one)
    if trainer.error is not None:
        raise RuntimeError(f"training failed: {trainer.error}")
    return got


def _training_row(got: dict[str, list[Any]], plan: Plan, loads: str) -> dict[str, Any]:
    alone = [rate for rate, *_ in got["alone"]]
    loaded = [rate for rate, *_ in got["loaded"]]
    answered = [n / plan.train_seconds for _, n, _, _ in got["loaded"]]
    batch = median([b for _, _, b, _ in got["loaded"]])
    cpu = {name: median([c for *_, c in runs]) for name, runs in got.items()}
    per_round = [a / b for a, b in zip(loaded, alone, strict=True)]
    value = median(per_round)
    return row(
        f"training steps/s while serving {CLIENTS} clients / training alone",
        value,
        "x",
        ">= 0.7",
        value >= 0.7,
        f"serve MODULE:FACTORY (benchmarks._mlp:trainer: the {_mlp.describe()}, "
        f"Adam on {_mlp.TRAIN_ROWS}-row batches made in the graph, POST /predict "
        f"batched); median of per-round ratios, range {spread(per_round)}; "
        f"steps/s alone {median(alone):.1f}, under load {median(loaded):.1f}, "
        f"serving {median(answered):.0f} req/s (mean batch {batch:.1f} rows); "
        f"CPU of the process (cores, medians): alone {cpu['alone']:.2f}, under "
        f"load {cpu['loaded']:.2f}; {plan.rounds} rounds x "
        f"{plan.train_seconds:.1f} s; load {loads}",
    )


# -- a version swap under load ---------------------------------------------------------


async def _swap(model_dir: str, tmp: Path, plan: Plan) -> dict[str, Any]:
    base, staging = tmp / "swap", tmp / "swap_v2"
    shutil.copytree(model_dir, base / "1")
    _mlp.export(str(staging), seed=1)
    app = create_model_app(
        str(base), model_name=_MODEL, batching=True, allowed_hosts=_HOSTS
    )
    versions = app.state.model
    body = _body()
    async with serving(app) as port:
        first = await _check(port, _PREDICT, body)
        run = await LoadRun.start(
            port, _PREDICT, body, connections=CLIENTS, seconds=plan.swap_seconds,
            warmup=_WARMUP_S,
        )  # fmt: skip
        try:
            with GcPauses() as pauses:
                await run.wait_started()
                await asyncio.sleep(_BEFORE_SWAP_S)
                start = time.perf_counter()
                os.rename(staging, base / "2")  # written elsewhere, then moved in
                swapped = await _served(versions, 2, run.stopped)
                took = time.perf_counter() - start
                await asyncio.sleep(_AFTER_SWAP_S)
                run.stop()
                result = await run.result()
        finally:
            run.kill()
        result["changed"] = await _check(port, _PREDICT, body) != first
    result["swapped_after"] = took if swapped else None
    result["gc_pauses"] = pauses.pauses
    return result


async def _served(versions: Any, number: int, stopped: asyncio.Event) -> bool:
    """Whether version *number* serves before *stopped* is set (looks every 10 ms)."""
    while versions.current.version != number:
        if stopped.is_set():
            return False
        await asyncio.sleep(0.01)
    return True


def _swap_row(result: dict[str, Any], plan: Plan, loads: str) -> dict[str, Any]:
    failed = failures(result)
    took = result["swapped_after"]
    lat, pauses = result["latencies"], result["gc_pauses"]
    when = (
        f"version 2 served {took:.2f} s after its folder appeared"
        if took is not None
        else f"version 2 NOT served within the {plan.swap_seconds:.0f} s run"
    )
    return row(
        f"requests failed during a version swap, {CLIENTS} clients",
        failed,
        "requests",
        "0",
        failed == 0 and took is not None and result["changed"],
        f"{when} (polled every 1 s, the default); its answers "
        f"{'differ from' if result['changed'] else 'are the SAME as'} version 1's; "
        f"{result['ok_all']} answered 200, "
        f"statuses {result['statuses']}, errors {result['errors']}; measured window "
        f"{result['seconds']:.1f} s: p99 {percentile(lat, 99) * 1e3:.1f} ms, max "
        f"{max(lat, default=float('nan')) * 1e3:.1f} ms; full GC pauses in the "
        f"server meanwhile: {len(pauses)}, longest "
        f"{max(pauses, default=0) * 1e3:.0f} ms; batched; load {loads}",
    )


# -- the benchmark ---------------------------------------------------------------------


def _loads(before: tuple[float, float, float]) -> str:
    return f"{before[0]:.2f}->{load()[0]:.2f}"


def run_on_serve_loop(main: Any) -> Any:
    """Run *main* on the loop ``serve`` uses: uvloop's when installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is part of the serve extra
        return asyncio.run(main)
    return uvloop.run(main)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Batched serving over HTTP, against one step per request and the HTTP ceiling."""
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = _mlp.export(str(tmp / "mlp" / "1"))
        costs = step_costs(model_dir)
        before = load()
        got = run_on_serve_loop(_http(model_dir, plan))
        rows = _http_rows(got, plan, costs, _loads(before))
        before = load()
        trained = run_on_serve_loop(_training(str(tmp / "train"), plan))
        rows.append(_training_row(trained, plan, _loads(before)))
        before = load()
        swap = run_on_serve_loop(_swap(model_dir, tmp, plan))
        rows.append(_swap_row(swap, plan, _loads(before)))
    return rows


if __name__ == "__main__":
    for r in run(quick="--full" not in sys.argv):
        print(r)
