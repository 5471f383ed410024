"""Admission control: requests wait their turn while training is starved."""

from __future__ import annotations

import anyio
import pytest

from asyncsess._admission import TrainingPace

pytestmark = pytest.mark.anyio


def steps(pace: TrainingPace, seconds: float, count: int) -> None:
    for _ in range(count):
        pace.step(seconds)


class TestPace:
    def test_steps_without_requests_set_the_baseline(self) -> None:
        pace = TrainingPace()
        steps(pace, 0.001, 32)
        assert pace.baseline == pytest.approx(0.001)
        assert pace.pace() == pytest.approx(1.0)

    def test_starved_steps_lower_the_rate_and_good_ones_raise_it(self) -> None:
        pace = TrainingPace(target=0.6, most=64)
        steps(pace, 0.001, 32)
        pace._last_request = 1e18  # requests overlap every step from now on
        steps(pace, 0.005, 8)  # five times slower: halved once per 8 steps
        assert pace.rate == 32
        steps(pace, 0.005, 80)
        assert pace.rate == pytest.approx(1 / 16)  # the floor
        steps(pace, 0.001, 400)  # keeping up again
        assert pace.rate > 1

    def test_a_badly_starved_step_acts_at_once(self) -> None:
        pace = TrainingPace(target=0.6, most=64)
        steps(pace, 0.001, 32)
        pace._last_request = 1e18
        steps(pace, 0.050, 3)  # fifty times slower: every step halves
        assert pace.rate == 8

    def test_bad_target(self) -> None:
        with pytest.raises(ValueError, match=r"target=1\.5"):
            TrainingPace(target=1.5)


async def test_requests_wait_for_training_steps_in_order() -> None:
    pace = TrainingPace(most=64)
    steps(pace, 0.001, 32)
    pace.rate = pace.tokens = 1.0
    pace._last_request = 1e18
    order: list[int] = []

    async def request(i: int) -> None:
        assert await pace.admit()
        order.append(i)
        pace.release()

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(request, i)
            await anyio.sleep(0.01)  # arrive in this order
        assert order == [0]  # one token: one request
        for n in range(1, 4):
            pace.rate = 1.0
            pace.step(0.001)  # each step lets one more in
            await anyio.sleep(0.01)
            assert order == list(range(n + 1))


async def test_without_training_requests_are_not_limited() -> None:
    pace = TrainingPace()
    pace.rate = pace.tokens = 0.0
    for _ in range(100):
        assert await pace.admit()
    assert pace.in_flight == 100


async def test_a_request_that_waits_too_long_is_refused() -> None:
    pace = TrainingPace(max_wait=0.05)
    steps(pace, 0.001, 32)
    pace.tokens = pace.rate = 0.0
    pace._last_request = 1e18
    pace.step(0.001)  # training runs; no token
    pace.tokens = 0.0
    assert not await pace.admit()
    assert pace.refused == 1
    assert not pace._waiters


async def test_a_cancelled_waiter_takes_nothing() -> None:
    pace = TrainingPace()
    steps(pace, 0.001, 32)
    pace.tokens = pace.rate = 0.0
    pace._last_request = 1e18
    pace.step(0.001)
    pace.tokens = 0.0
    with anyio.move_on_after(0.05):
        await pace.admit()
    assert not pace._waiters
    assert pace.in_flight == 0
    pace.stopped()
    assert await pace.admit()


async def test_the_middleware_refuses_with_retry_after_and_exempts_stop() -> None:
    httpx = pytest.importorskip("httpx")
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from asyncsess._admission import Admission

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    pace = TrainingPace(max_wait=0.05)
    steps(pace, 0.001, 32)
    pace._last_request = 1e18
    app = Starlette(
        routes=[Route("/status", ok), Route("/stop", ok, methods=["POST"])],
        middleware=[Middleware(Admission, pace=pace, exempt=("/stop",))],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/status")).status_code == 200  # a token left
        pace.tokens = pace.rate = 0.0
        pace.step(0.001)
        pace.tokens = 0.0
        busy = await client.get("/status")
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert "busy training" in busy.json()["error"]
        assert (await client.post("/stop")).status_code == 200
        pace.stopped()
        assert (await client.get("/status")).status_code == 200
    assert pace.in_flight == 0


async def test_waiters_go_in_once_training_stalls() -> None:
    # No step for a second (a stuck input, a long checkpoint) and no stopped():
    # training is not running, so waiting requests are let in, not refused.
    pace = TrainingPace(max_wait=30)
    steps(pace, 0.001, 32)
    pace.rate = 1 / 16
    pace._last_request = 1e18
    pace.step(0.001)  # the last step
    pace.tokens = 0.0
    with anyio.fail_after(20):
        assert await pace.admit()
        assert await pace.admit()
    assert pace.refused == 0
    assert pace.in_flight == 2
