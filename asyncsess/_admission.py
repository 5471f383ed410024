"""Admission control: HTTP requests take turns with training on one event loop.

Each request handled on the loop delays the training task's next turn, and
under a few hundred clients the loop runs a step only between long runs of
request callbacks: training nearly stops. `TrainingPace` compares the mean
of the last training steps with the mean of steps no request overlapped and
lets requests in at a rate per training step: halved every 8 steps while
training runs below *target* (70%) of that pace, and at once on a step ten
times the usual, raised by a quarter while it keeps up. Requests over the rate
wait their turn in arrival order, which costs the loop nothing; one that waited
*max_wait* seconds is answered 503 with ``Retry-After``. With no training
running (no step for a second) nothing is limited.
"""

from __future__ import annotations

import collections
import statistics
import time
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

_BUSY_BODY = b'{"error": "the service is busy training; retry in a second."}'
_ADJUST_EVERY = 8  # training steps between two adjustments of the rate
_STARVED = 10  # a step this many times its baseline adjusts at once
_IDLE_AFTER = 1.0  # seconds without a step: training is not running
_LEAST_RATE = 1 / 16  # requests per step: never less than one per 16 steps


class TrainingPace:
    """How many HTTP requests may start per training step to keep *target* pace.

    The trainer calls `step` after every training step; `Admission` asks
    `admit` and `release` around every request.
    """

    def __init__(
        self, *, target: float = 0.7, most: int = 64, max_wait: float = 10.0
    ) -> None:
        if not 0 < target < 1:
            raise ValueError(f"target must be in (0, 1). Received: target={target!r}")
        self.target = target
        self.most = most
        self.max_wait = max_wait
        self.rate = float(most)  # requests let in per training step
        self.tokens = float(most)
        self.in_flight = 0
        self.baseline = 0.0  # a step's mean seconds with no request in flight
        self.refused = 0
        self._steps = 0
        self._last_step = -1e9
        self._waiters: collections.deque[anyio.Event] = collections.deque()
        self._last_request = -1e9  # when a request was last let in or done
        #: Recent steps no request overlapped: their mean is the baseline.
        self._alone: collections.deque[float] = collections.deque(maxlen=256)
        #: The last steps, whatever overlapped them.
        self._recent: collections.deque[float] = collections.deque(maxlen=64)

    # -- the trainer's side ----------------------------------------------------------

    def step(self, seconds: float) -> None:
        """Note one training step of *seconds* (wall time, hooks included)."""
        now = self._last_step = time.monotonic()
        if self._last_request < now - seconds and not self.in_flight:
            self._alone.append(seconds)  # no request touched this step
            if len(self._alone) % _ADJUST_EVERY == 0:
                self.baseline = statistics.fmean(self._alone)
        self._recent.append(seconds)
        self._steps += 1
        if self.baseline and seconds > _STARVED * self.baseline:
            self.rate = max(_LEAST_RATE, self.rate / 2)  # badly starved: at once
        elif self._steps % _ADJUST_EVERY == 0:
            self._adjust()
        self.tokens = min(self.tokens + self.rate, max(2.0, 2 * self.rate))
        self._wake()

    def stopped(self) -> None:
        """Training ended: requests are no longer limited."""
        self._last_step = -1e9
        self._wake()

    def _adjust(self) -> None:
        """Halve the rate if training fell behind *target*, else raise it."""
        pace = self.pace()
        if pace < self.target:
            self.rate = max(_LEAST_RATE, self.rate / 2)
        elif pace > self.target + 0.1:
            self.rate = min(float(self.most), self.rate * 1.25 + 0.25)

    def pace(self) -> float:
        """Training's recent pace relative to its pace without requests (<= ~1).

        Mean step times of both (the unoverlapped steps, the last 64), as steps
        per second are: starving shows as a longer tail, which a median hides,
        and the same statistic on both sides keeps an idle machine at ~1.
        """
        if not self.baseline or len(self._recent) < _ADJUST_EVERY:
            return 1.0
        return self.baseline / statistics.fmean(self._recent)

    # -- the requests' side ----------------------------------------------------------

    def _training(self) -> bool:
        return time.monotonic() - self._last_step < _IDLE_AFTER

    def _may_enter(self) -> bool:
        return self.tokens >= 1 or not self._training()

    def _enter(self) -> None:
        self.in_flight += 1
        self.tokens = max(0.0, self.tokens - 1)

    async def admit(self) -> bool:
        """Wait for a request's turn; False if it waited *max_wait* in vain.

        Cancellation: a cancelled waiter leaves the queue; nothing was taken.
        """
        self._last_request = time.monotonic()
        self._wake()  # training may have gone idle since the last wake
        if not self._waiters and self._may_enter():
            self._enter()
            return True
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await self._wait_turn(event)
        except BaseException:  # cancelled: give back a turn it may have got
            if event.is_set():
                self.release()
            else:
                self._waiters.remove(event)
            raise
        if not event.is_set():
            self._waiters.remove(event)
            self.refused += 1
            return False
        return True  # `_wake` counted it in

    async def _wait_turn(self, event: anyio.Event) -> None:
        """Wait for *event*, at most *max_wait*; wake all if training goes idle."""
        left = self.max_wait
        while not event.is_set() and left > 0:
            # No step in _IDLE_AFTER seconds means no training: nothing to wait for.
            idle_in = self._last_step + _IDLE_AFTER - time.monotonic()
            wait = min(left, max(idle_in, 0.01))
            started = time.monotonic()
            with anyio.move_on_after(wait):
                await event.wait()
            left -= time.monotonic() - started
            self._wake()

    def release(self) -> None:
        """A request admitted by `admit` is done."""
        self._last_request = time.monotonic()
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._may_enter():
            self._enter()
            self._waiters.popleft().set()


class Admission:
    """ASGI middleware letting HTTP requests in as *pace* allows.

    Paths in *exempt* (``POST /stop``: control never waits) always go in.

    Cancellation: a request cancelled while it waits for its turn (the client
    left) takes nothing; one cancelled inside the app gives its turn back.
    """

    def __init__(
        self, app: ASGIApp, pace: TrainingPace, exempt: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.pace = pace
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        pace = self.pace
        if not await pace.admit():
            await _busy(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            pace.release()


async def _busy(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", b"1"),
                (b"content-length", str(len(_BUSY_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _BUSY_BODY})
