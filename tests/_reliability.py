"""Helpers shared by the reliability tests: TF session census, thread signals."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
import tensorflow as tf

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
