"""Helpers shared by the reliability tests: TF session census, thread signals."""

from __future__ import annotations

import collections
import threading
from typing import Any

import anyio
import pytest
import tensorflow as tf

import asyncsess

v1 = tf.compat.v1


class SessionCensus:
    """Every `tf.compat.v1.Session` constructed while installed, to check closes."""

    def __init__(self) -> None:
        self.sessions: list[Any] = []

    def open_sessions(self) -> list[Any]:
        """The sessions made so far that are not closed."""
        return [s for s in self.sessions if not s._closed]


@pytest.fixture
def tf_sessions(monkeypatch: pytest.MonkeyPatch) -> SessionCensus:
    """Record every TF session created during the test (SessionManager's included)."""
    census = SessionCensus()
    original = v1.Session.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        census.sessions.append(self)

    monkeypatch.setattr(v1.Session, "__init__", init)
    return census


class ThreadSignal:
    """An event set from any thread (a TF py_func, a sync hook) and awaited on a loop.

    `wait` parks an anyio worker thread on a `threading.Event`; `release` (called
    when the test is done with it) lets that thread go even if nothing set it.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.was_set = False

    def set(self) -> None:
        self.was_set = True
        self._event.set()

    def release(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await anyio.to_thread.run_sync(self._event.wait)


# -- fault injection ------------------------------------------------------------------

PREEMPTIONS = (tf.errors.AbortedError, tf.errors.UnavailableError)


class Faults:
    """Decides where preemption errors are injected and counts them.

    ``plan`` maps a point ("create", "step", "hook_run", "after_create_session")
    to a set of call numbers (1-based, per point) that fail, or to a probability.
    """

    def __init__(
        self,
        plan: dict[str, Any],
        seed: int = 0,
        *,
        error: type[BaseException] | None = None,
        step_marker: Any = None,
    ) -> None:
        import random

        self.plan = plan
        #: The error raised; None alternates AbortedError and UnavailableError.
        self.error = error
        #: When set, only session runs fetching it count as "step" (not the
        #: global-step reads of session creation or of run_without_hooks).
        self.step_marker = step_marker
        self.calls: collections.Counter[str] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()
        self._random = random.Random(seed)

    def check(self, point: str) -> None:
        """Raise an AbortedError or UnavailableError if *point* fails this time."""
        self.calls[point] += 1
        rule = self.plan.get(point)
        if rule is None:
            return
        if isinstance(rule, float):
            fail = self._random.random() < rule
        else:
            fail = self.calls[point] in rule
        if fail:
            self.injected[point] += 1
            error = self.error or PREEMPTIONS[self.injected.total() % 2]
            raise error(None, None, f"injected at {point} #{self.calls[point]}")

    @property
    def total(self) -> int:
        return self.injected.total()


_hook_run = threading.local()


class FaultySession(v1.Session):  # type: ignore[misc]
    """A real TF session whose run() is preempted when its Faults say so.

    Instances are real sessions re-classed after creation, so TF's own hooks and
    `Saver.save` accept them. Runs from a hook's own code (inside `hook_run`)
    count as the "hook_run" point, every other run as "step".
    """

    faults: Faults

    def run(self, *args: Any, **kwargs: Any) -> Any:
        faults = self.faults
        if getattr(_hook_run, "active", False):
            faults.check("hook_run")
        elif faults.step_marker is None or _fetches(
            faults.step_marker, args[0] if args else kwargs.get("fetches")
        ):
            faults.check("step")
        return super().run(*args, **kwargs)


def _fetches(marker: Any, fetches: Any) -> bool:
    if fetches is marker:
        return True
    if isinstance(fetches, (list, tuple)):
        return any(_fetches(marker, f) for f in fetches)
    if isinstance(fetches, dict):
        return any(_fetches(marker, f) for f in fetches.values())
    return False


class hook_run:
    """Mark the session runs made inside the block as a hook's own extra runs."""

    def __enter__(self) -> None:
        _hook_run.active = True

    def __exit__(self, *exc: object) -> None:
        _hook_run.active = False


class FaultyCreator(asyncsess.SessionCreator):
    """Wraps a real creator: preempts creation and the sessions it makes."""

    def __init__(self, faults: Faults, inner: Any = None) -> None:
        self.faults = faults
        self.inner = inner or asyncsess.ChiefSessionCreator()
        self.created: list[Any] = []

    @property
    def restored_checkpoint(self) -> Any:
        return getattr(self.inner, "restored_checkpoint", None)

    async def create_session(self) -> Any:
        self.faults.check("create")
        sess = await self.inner.create_session()
        sess.__class__ = FaultySession
        sess.faults = self.faults
        self.created.append(sess)
        return sess
