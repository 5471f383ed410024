"""Recovery from preemption: which errors, how many retries, how far apart, and why."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ._tf import PREEMPTION_ERRORS, OutOfRangeError


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


def raise_coordinator_error(coord: Any) -> None:
    """Raise the coordinator's reported error, unless it is a preemption."""
    try:
        coord.raise_requested_exception()
    except Exception as exc:
        if not is_preemption(exc):
            raise


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
