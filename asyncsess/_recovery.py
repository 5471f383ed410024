"""Recovery from preemption: which errors, how many retries, how far apart, and why.

`Recovery` is the one loop every retried call of a session goes through (creating
the TF session, a step, a step function): find the root cause, decide whether it
is a preemption, recreate the TF session and call again.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._tf import PREEMPTION_ERRORS, OutOfRangeError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

logger = logging.getLogger("asyncsess")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RecoveryPolicy:
    """How a `MonitoredSession` retries after `AbortedError`/`UnavailableError`.

    TensorFlow retries forever with no pause (tensorflow#45088). asyncsess retries
    at once the first time, as TensorFlow does, then waits with exponential backoff
    and jitter, and gives up after ``max_recoveries`` recoveries in a row (a
    successful step resets the count), raising the last error with its own type.

    Args:
      max_recoveries: Consecutive recoveries allowed before the error propagates;
        None retries forever, as TensorFlow does.
      initial_backoff: Seconds to wait before the second consecutive retry.
      max_backoff: The longest wait between retries, in seconds.
      multiplier: Growth factor of the wait from one retry to the next.
      jitter: Random spread of each wait, as a fraction of it (0 to 1).
    """

    max_recoveries: int | None = 16
    initial_backoff: float = 0.1
    max_backoff: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_recoveries is not None and self.max_recoveries < 0:
            raise ValueError(
                "max_recoveries must be None or >= 0; "
                f"Received: max_recoveries={self.max_recoveries!r}"
            )
        for name in ("initial_backoff", "max_backoff"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name} must be >= 0; Received: {name}={getattr(self, name)!r}"
                )
        if self.multiplier < 1:
            raise ValueError(
                f"multiplier must be >= 1; Received: multiplier={self.multiplier!r}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(
                f"jitter must be between 0 and 1; Received: jitter={self.jitter!r}"
            )

    def allows(self, consecutive: int) -> bool:
        """Whether recovery number *consecutive* (1-based, in a row) may happen."""
        return self.max_recoveries is None or consecutive <= self.max_recoveries

    def delay(self, consecutive: int) -> float:
        """Seconds to wait before recovery number *consecutive* (0 for the first)."""
        if consecutive <= 1 or self.initial_backoff == 0:
            return 0.0
        base = min(
            self.max_backoff,
            self.initial_backoff * self.multiplier ** (consecutive - 2),
        )
        return base * (1 + self.jitter * (2 * random.random() - 1))


def is_preemption(exc: BaseException) -> bool:
    """Whether *exc* is one of TensorFlow's preemption errors."""
    return isinstance(exc, PREEMPTION_ERRORS)


def held_error(coord: Any) -> BaseException | None:
    """The error the coordinator was stopped with, or None."""
    try:
        coord.raise_requested_exception()
    except Exception as exc:
        return exc
    return None


def raise_coordinator_error(coord: Any) -> None:
    """Raise the coordinator's reported error, unless it is a preemption."""
    error = held_error(coord)
    if error is not None and not is_preemption(error):
        raise error


def coordinator_root_cause(coord: Any, exc: BaseException) -> BaseException:
    """TF's rule: a preemption held by the coordinator is the root cause of *exc*.

    So is any error it holds when the step hit end of input: the coordinator's
    stop closed the queues (tests/test_queues.py, source errors).
    """
    if coord is None or is_preemption(exc):
        return exc
    try:
        coord.raise_requested_exception()
    except Exception as held:
        if is_preemption(held) or isinstance(exc, OutOfRangeError):
            return held
    return exc


@dataclass(slots=True)
class Recovery:
    """The retry loop of one session, and its counters.

    Args:
      create_session: Creates the TF session once (init/restore, queue runners,
        hooks' after_create_session).
      release_session: Stops the queue runners and closes the TF session.
      coordinator: Returns the current TF session's coordinator, or None.
      enabled: False for `SingularMonitoredSession`: errors propagate.
    """

    create_session: Callable[[], Awaitable[None]]
    release_session: Callable[[], Awaitable[object]]
    coordinator: Callable[[], Any]
    enabled: bool = field(kw_only=True)
    #: How preemption errors are retried (replaceable at any time).
    policy: RecoveryPolicy = field(default_factory=lambda: RecoveryPolicy())
    #: TF sessions recreated after a preemption, in all.
    count: int = 0
    #: Recoveries since the last call that succeeded.
    in_a_row: int = 0
    #: Why the session cannot be used any more (recovery failed), or None.
    broken: str | None = None
    #: A preemption the coordinator held when `should_stop` looked: the next
    #: call recreates the TF session first, as TensorFlow's ``_check_stop``.
    pending: BaseException | None = None

    async def create(self) -> None:
        """Create the TF session, retrying preemptions under the policy."""
        await self.call("creating the session", self.create_session, recreate=False)

    async def call(
        self,
        during: str,
        attempt: Callable[..., Awaitable[T]],
        *args: Any,
        recreate: bool = True,
    ) -> T:
        """``await attempt(*args)``, recreating the TF session after a preemption.

        Raises the root cause of a failed attempt (TF's rule: a preemption the
        coordinator holds), or the last preemption once the policy gives up.
        *recreate* False: the attempt creates the session itself (`create`), and
        a success does not reset the count of recoveries in a row.

        Cancellation: cancels the attempt or the recovery in progress.
        """
        if recreate and self.pending is not None:
            error, self.pending = self.pending, None
            await self._recover(error, "checking whether to stop")
        while True:  # one loop for every retried call (the step path is hot)
            try:
                result = await attempt(*args)
            except Exception as exc:
                error = coordinator_root_cause(self.coordinator(), exc)
                if not (self.enabled and is_preemption(error)):
                    if error is exc:
                        raise
                    raise error from None
                if recreate:
                    await self._recover(error, during)
                else:  # the attempt itself creates the session again
                    await self._prepare_retry(error, during)
                continue
            if recreate:
                self.in_a_row = 0
            return result

    async def _recover(self, exc: BaseException, during: str) -> None:
        try:
            await self._prepare_retry(exc, during)
            await self.create()
        except BaseException as error:
            if error is exc:  # the policy refused another recovery
                reason = f"gave up after {self.in_a_row - 1} recoveries in a row"
            else:
                reason = "could not be recreated after a preemption"
            self.broken = (
                f"The session {reason} ({type(error).__name__}: {error}); close it "
                "and open a new one."
            )
            raise

    async def _prepare_retry(self, exc: BaseException, during: str) -> None:
        """Count a recovery, enforce the policy, back off and drop the old session."""
        self.in_a_row += 1
        policy = self.policy
        if not policy.allows(self.in_a_row):
            logger.error(
                "Giving up after %d recoveries in a row (limit %s) while %s: %s",
                self.in_a_row - 1,
                policy.max_recoveries,
                during,
                exc,
            )
            raise exc
        # Counted once allowed: a refused recovery recreates nothing
        # (tests/test_recovery.py::TestPolicy).
        self.count += 1
        logger.warning(
            "Recovering from %s while %s (recovery %d, %d in a row); a new session "
            "will be created. This may be due to a preemption of a worker or "
            "parameter server. Error: %s",
            type(exc).__name__,
            during,
            self.count,
            self.in_a_row,
            exc,
        )
        await self.release_session()
        delay = policy.delay(self.in_a_row)
        if delay:
            await anyio.sleep(delay)
