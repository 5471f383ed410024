"""The web service (`python -m asyncsess serve`): endpoints, limits, token, shutdown."""

from __future__ import annotations

import json
import re
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("starlette", reason="needs the serve extra")
httpx = pytest.importorskip("httpx", reason="needs the test group")
uvicorn = pytest.importorskip("uvicorn", reason="needs the serve extra")

from asyncsess import _cli  # noqa: E402
from asyncsess._serve import bind_problem, is_loopback  # noqa: E402
from asyncsess._serve_app import Refused, create_app, parse_rows  # noqa: E402

from ._serving import over_http, serve_command  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from starlette.applications import Starlette

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROW = [0.5, -1.0, 2.0, 0.0]
# Steps sleep a little so the service leaves CPU to other tests.
STEP_INTERVAL = 0.002
LIMIT = 8192  # max_body_bytes in the bad-request test


def latest_step(logdir: Path) -> int | None:
    path = tf.train.latest_checkpoint(str(logdir))
    return None if path is None else int(path.rsplit("-", 1)[1])


async def until(
    client: httpx.AsyncClient,
    predicate: Callable[[dict[str, Any]], bool],
    seconds: float = 60,
) -> dict[str, Any]:
    """Poll GET /status until *predicate* holds; the status that satisfied it."""
    with anyio.fail_after(seconds):
        while True:
            status: dict[str, Any] = (await client.get("/status")).json()
            if predicate(status):
                return status
            await anyio.sleep(0.02)


async def advances(client: httpx.AsyncClient) -> dict[str, Any]:
    """Wait until training makes progress from now on; the later status."""
    first = (await client.get("/status")).json()
    assert first["running"] is True
    return await until(client, lambda s: s["global_step"] > first["global_step"] + 2)


@asynccontextmanager
async def in_process(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Drive *app*'s lifespan directly and talk to it over ASGI (any backend)."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        yield client


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
class TestOverHTTP:
    """uvicorn on 127.0.0.1 and a real HTTP client (uvicorn runs on asyncio)."""

    async def test_trains_while_answering(self, tmp_path: Path) -> None:
        app = create_app(str(tmp_path), token=TOKEN, step_interval=STEP_INTERVAL)
        async with over_http(app) as client:
            status = await advances(client)
            assert isinstance(status["loss"], float)
            assert isinstance(status["steps_per_sec"], float)
            assert status["input_dim"] == 4
            for rows in (1, 3):
                response = await client.post("/predict", json={"x": [ROW] * rows})
                assert response.status_code == 401
                response = await client.post(
                    "/predict", json={"x": [ROW] * rows}, headers=AUTH
                )
                assert response.status_code == 200, response.text
                y = response.json()["y"]
                assert len(y) == rows
                assert all(isinstance(v, float) for v in y)
            await advances(client)
            metrics = await client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            for name in (
                "asyncsess_steps_total",
                "asyncsess_step_seconds_bucket",
                "asyncsess_hook_seconds_bucket",
                "asyncsess_device_step_seconds_bucket",
                "asyncsess_event_loop_lag_seconds_bucket",
            ):
                assert name in metrics.text
            page = await client.get("/")
            assert page.headers["content-type"].startswith("text/html")
            assert "script-src 'sha256-" in page.headers["content-security-policy"]
            assert "<canvas" in page.text
            history = (await client.get("/history")).json()
            assert history["points"]
            assert history["points"][-1][0] <= history["global_step"]

    async def test_stop_ends_training_with_a_checkpoint(self, tmp_path: Path) -> None:
        app = create_app(str(tmp_path), token=TOKEN, step_interval=STEP_INTERVAL)
        async with over_http(app) as client:
            await advances(client)
            response = await client.post("/stop", headers=AUTH)
            assert response.status_code == 202
            status = await until(client, lambda s: not s["running"])
            assert status["stop_reason"]
            assert status["steps_per_sec"] == 0.0
            assert latest_step(tmp_path) == status["global_step"]
            # The final checkpoint answers predictions until shutdown.
            status = await until(
                client, lambda s: s["predictions_from"] == "checkpoint"
            )
            assert status["predictions_from"] == "checkpoint"
            response = await client.post("/predict", json={"x": [ROW]}, headers=AUTH)
            assert response.status_code == 200, response.text
            assert (await client.post("/stop", headers=AUTH)).status_code == 202
        assert latest_step(tmp_path) == status["global_step"]

    async def test_shutdown_saves(self, tmp_path: Path) -> None:
        app = create_app(str(tmp_path), step_interval=STEP_INTERVAL)
        async with over_http(app) as client:
            await advances(client)
        # Leaving stopped uvicorn: lifespan shutdown ended training after a step.
        trainer = app.state.trainer
        assert not trainer.running
        assert trainer.global_step > 0
        assert latest_step(tmp_path) == trainer.global_step

    async def test_bad_requests_are_refused_and_training_goes_on(
        self, tmp_path: Path
    ) -> None:
        app = create_app(
            str(tmp_path),
            token=TOKEN,
            step_interval=STEP_INTERVAL,
            max_rows=8,
            max_body_bytes=LIMIT,
        )
        async with over_http(app) as client:
            await advances(client)
            for case in BAD_REQUESTS:
                response = await send(client, case)
                assert response.status_code == case.status, (case, response.text)
                if case.status != 400:  # Starlette's TrustedHost answers plain text
                    assert case.detail in response.json()["detail"], case
            status = await advances(client)
            assert status["error"] is None
            metrics = (await client.get("/metrics")).text
            assert 'asyncsess_rejected_requests_total{status="422"}' in metrics


class Case:
    """One bad request and what the service must answer."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        path: str = "/predict",
        auth: bool = True,
        stream: bool = False,
    ) -> None:
        self.status, self.detail, self.path, self.stream = status, detail, path, stream
        self.body = json.dumps(json_body).encode() if json_body is not None else body
        self.headers = {**(AUTH if auth else {}), **(headers or {})}

    def __repr__(self) -> str:
        return f"Case({self.status}, {self.detail!r}, {self.path}, {self.body!r:.60})"


def _row(value: str) -> bytes:
    return ('{"x": [[1, 2, 3, ' + value + "]]}").encode()


BAD_REQUESTS = [
    Case(401, "token", json_body={"x": [ROW]}, auth=False),
    Case(401, "token", json_body={"x": [ROW]}, auth=False, path="/stop"),
    Case(401, "token", json_body={"x": [ROW]}, headers={"Authorization": "Bearer no"}),
    Case(401, "token", json_body={"x": [ROW]}, headers={"Authorization": TOKEN}),
    Case(
        401,
        "token",
        json_body={},
        headers={"Authorization": "Basic " + TOKEN},
        path="/stop",
    ),
    Case(
        403,
        "Cross-origin",
        json_body={"x": [ROW]},
        headers={"Origin": "http://evil.example"},
    ),
    Case(403, "Cross-origin", body=b"", headers={"Origin": "null"}, path="/stop"),
    Case(400, "", json_body={"x": [ROW]}, headers={"Host": "evil.example"}),
    Case(422, "not valid JSON", body=b'{"x": [[1, 2'),
    Case(422, "not valid JSON", body=b""),
    Case(422, "not valid JSON", body=b"\xff\xfe\x00garbage"),
    Case(422, "nested too deeply", body=b"[" * 1500 + b"]" * 1500),
    Case(422, "JSON object", json_body=[[1, 2, 3, 4]]),
    Case(422, "JSON object", json_body={"y": [ROW]}),
    Case(422, "Unexpected key", json_body={"x": [ROW], "admin": True}),
    Case(422, "non-empty list", json_body={"x": []}),
    Case(422, "non-empty list", json_body={"x": "1,2,3,4"}),
    Case(422, "list of 4 numbers", json_body={"x": [{"a": 1}]}),
    Case(422, "x[1] has 3 values", json_body={"x": [ROW, [1, 2, 3]]}),
    Case(422, "x[0] has 5 values", json_body={"x": [[*ROW, 1]]}),
    Case(422, "must be a number. Received: str", json_body={"x": [["1", 2, 3, 4]]}),
    Case(422, "must be a number. Received: bool", json_body={"x": [[True, 2, 3, 4]]}),
    Case(422, "must be a number. Received: NoneType", body=_row("null")),
    Case(422, "must be a number. Received: list", body=_row("[5]")),
    Case(422, "NaN is not a number", body=_row("NaN")),
    Case(422, "Infinity is not a number", body=_row("Infinity")),
    Case(422, "-Infinity is not a number", body=_row("-Infinity")),
    Case(422, "must be finite", body=_row("1e999")),
    Case(422, "out of float32 range", body=_row("1e39")),
    Case(422, "out of float32 range", body=_row("9" * 60)),
    Case(422, "not valid JSON", body=_row("9" * 5000)),
    Case(422, "at most 8 per call", json_body={"x": [ROW] * 9}),
    Case(413, f"limit of {LIMIT} bytes", json_body={"x": [ROW] * 500}),
    Case(413, f"limit of {LIMIT} bytes", body=b" " * (LIMIT + 1), path="/stop"),
    Case(413, f"limit of {LIMIT} bytes", body=b"[" * (LIMIT + 1), stream=True),
]


async def send(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    if case.stream:  # no Content-Length: the limit must hold while reading

        async def chunks() -> AsyncIterator[bytes]:
            assert case.body is not None
            for i in range(0, len(case.body), 1000):
                yield case.body[i : i + 1000]

        return await client.post(case.path, content=chunks(), headers=case.headers)
    return await client.post(case.path, content=case.body, headers=case.headers)


class TestLifespan:
    """The lifespan and the training task, on asyncio and trio (ASGI, no server)."""

    async def test_trains_stops_and_resumes(
        self, tmp_path: Path, no_thread_leaks: None
    ) -> None:
        app = create_app(str(tmp_path), token=TOKEN, step_interval=STEP_INTERVAL)
        async with in_process(app) as client:
            await advances(client)
            response = await client.post("/predict", json={"x": [ROW]}, headers=AUTH)
            assert response.status_code == 200, response.text
            assert (await client.post("/stop", headers=AUTH)).status_code == 202
            stopped = await until(
                client, lambda s: s["predictions_from"] == "checkpoint"
            )
            assert not stopped["running"]
        assert latest_step(tmp_path) == stopped["global_step"]
        # A new service on the same directory resumes from the checkpoint.
        again = create_app(str(tmp_path), step_interval=STEP_INTERVAL)
        async with in_process(again) as client:
            status = (await client.get("/status")).json()
            assert status["global_step"] == stopped["global_step"]
            await advances(client)
        assert latest_step(tmp_path) == again.state.trainer.global_step

    async def test_last_step_ends_training(
        self, tmp_path: Path, no_thread_leaks: None
    ) -> None:
        app = create_app(str(tmp_path), last_step=5)
        async with in_process(app) as client:
            status = await until(
                client, lambda s: s["predictions_from"] == "checkpoint"
            )
            assert status["global_step"] == 5
            assert not status["running"]
            response = await client.post("/predict", json={"x": [ROW, ROW]})
            assert response.status_code == 200, response.text
        assert latest_step(tmp_path) == 5

    async def test_a_session_that_cannot_open_fails_startup(
        self, tmp_path: Path, no_thread_leaks: None
    ) -> None:
        async with in_process(create_app(str(tmp_path), last_step=2)):
            pass
        # The checkpoint holds 4-feature weights: a 3-feature model cannot restore.
        app = create_app(str(tmp_path), input_dim=3)
        with pytest.raises(ValueError, match="input_dim=4, not 3"):
            async with in_process(app):
                pass
        # A session that fails to open (its directory is a file) fails startup too.
        blocked = tmp_path / "file"
        blocked.write_text("")
        with pytest.raises(tf.errors.FailedPreconditionError):
            async with in_process(create_app(str(blocked / "run"))):
                pass


class TestPayloads:
    """`parse_rows`: what reaches the session."""

    def test_valid_rows_become_float32(self) -> None:
        rows = parse_rows(b'{"x": [[1, 2.5, -3, 0], [0, 0, 0, 1e3]]}', 4, 8)
        assert rows.dtype.name == "float32"
        assert rows.shape == (2, 4)

    @pytest.mark.parametrize("case", [c for c in BAD_REQUESTS if c.status == 422])
    def test_invalid_rows_are_refused(self, case: Case) -> None:
        assert case.body is not None
        with pytest.raises(Refused, match=re.escape(case.detail)) as info:
            parse_rows(case.body, 4, 8)
        assert info.value.status == 422


class TestWhoMayControlIt:
    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
    def test_loopback_needs_no_token(self, host: str) -> None:
        assert is_loopback(host)
        assert bind_problem(host, None) is None

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
    def test_other_hosts_need_a_token(self, host: str) -> None:
        assert not is_loopback(host)
        assert bind_problem(host, "t0ken") is None
        problem = bind_problem(host, None)
        assert problem is not None
        assert "--token" in problem
        assert "ASYNCSESS_TOKEN" in problem

    def test_command_line_refuses_a_public_host_without_token(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.delenv("ASYNCSESS_TOKEN", raising=False)
        assert _cli.main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 2
        err = capsys.readouterr().err
        assert "refusing to listen on 0.0.0.0 without a token" in err
        assert "--token TOKEN" in err
        assert "ASYNCSESS_TOKEN" in err

    def test_blank_token_is_refused(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("ASYNCSESS_TOKEN", "   ")
        assert _cli.main(["serve"]) == 2
        assert "blank" in capsys.readouterr().err


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_shuts_the_command_down_gracefully(
    signum: signal.Signals, tmp_path: Path
) -> None:
    args = ["--logdir", str(tmp_path / "run")]
    async with serve_command(*args, env={"ASYNCSESS_TOKEN": TOKEN}) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as client:
            status = await _first_steps(client, served.process)
        code = await served.stop(signum)
    log = served.log()
    assert code == 0, log
    assert (latest_step(tmp_path / "run") or 0) >= status["global_step"], log


async def _first_steps(client: httpx.AsyncClient, process: Any) -> dict[str, Any]:
    with anyio.fail_after(90):
        while True:
            assert process.returncode is None, "the service exited early"
            try:
                status: dict[str, Any] = (await client.get("/status")).json()
            except httpx.TransportError:
                await anyio.sleep(0.1)
                continue
            if status["global_step"] > 0:
                return status
            await anyio.sleep(0.05)


class TestLimits:
    def test_the_body_limit_is_sized_from_the_model_input(self, tmp_path: Path) -> None:
        from asyncsess._serve_app import body_limit

        app = create_app(str(tmp_path / "run"), input_dim=4)
        limit = app.state.trainer.config.max_body_bytes
        assert limit == body_limit(1024, 4) < 1 << 20
        # 1024 rows of 4 numbers as a client would write them fit.
        body = json.dumps({"x": [[-1.2345678901234567e-05] * 4] * 1024})
        assert len(body) < limit

    def test_unexpected_keys_are_listed_briefly(self) -> None:
        for keys, says in [(10, "and 5 more"), (60_000, "more than one key")]:
            extra = {f"k{i}" * 30: 1 for i in range(keys)}
            body = json.dumps({"x": [[1, 2, 3, 4]], **extra}).encode()
            with pytest.raises(Refused) as refused:
                parse_rows(body, 4, 1024)
            assert refused.value.status == 422
            assert len(refused.value.detail) < 400
            assert says in refused.value.detail

    def test_bodies_that_cannot_be_valid_are_refused_unparsed(self) -> None:
        # 44,000 empty rows fit under the body limit; parsing them would hold
        # the loop for milliseconds and set off full collections.
        body = json.dumps({"x": [[]] * 44_000}).encode()
        with pytest.raises(Refused, match="more than 1024 rows") as refused:
            parse_rows(body, 4, 1024)
        assert refused.value.status == 422

    @pytest.mark.parametrize(
        ("rows", "message"),
        [
            ([[True, 1, 2, 3]], "x[0][0] must be a number. Received: bool"),
            ([[1, 2, 3, "4.5"]], "x[0][3] must be a number. Received: str"),
            ([[1, 2, 3]], "x[0] has 3 values; the model takes 4."),
            ([[1, 2, 3, 1e39]], "x[0][3] is out of float32 range."),
            ([[1, 2, 3, 4]] * 9 + [[1, 2, [3], 4]], "x[9][2] must be a number"),
            ([[1, 2, 3, None]], "x[0][3] must be a number. Received: NoneType"),
        ],
    )
    def test_rows_numpy_would_accept_are_still_refused(
        self, rows: list[Any], message: str
    ) -> None:
        body = json.dumps({"x": rows}).encode()
        with pytest.raises(Refused, match=re.escape(message)):
            parse_rows(body, 4, 1024)

    def test_plain_rows_read_at_once_equal_the_checked_ones(self) -> None:
        rng = np.random.default_rng(3)
        for n in (1, 7, 1024):
            rows = rng.normal(size=(n, 4)).tolist()
            rows[0][0] = 3  # an int among floats
            got = parse_rows(json.dumps({"x": rows}).encode(), 4, 1024)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, np.asarray(rows, dtype=np.float32))
