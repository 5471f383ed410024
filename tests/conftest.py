"""Shared fixtures: both anyio backends, small graphs, thread census."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf

if TYPE_CHECKING:
    from collections.abc import Iterator

v1 = tf.compat.v1


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    # Explicit params: since anyio 4.12 the default silently drops a backend that
    # is not installed.
    return str(request.param)


class Model:
    """A tiny graph with a global step, a trainable variable and a placeholder."""

    def __init__(self) -> None:
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.global_step = v1.train.get_or_create_global_step()
            self.x = v1.placeholder(tf.float32, shape=[], name="x")
            self.w = v1.get_variable("w", initializer=1.0)
            self.y = self.x * self.w
            self.loss = tf.square(self.w - 3.0)
            opt = v1.train.GradientDescentOptimizer(0.1)
            self.train_op = opt.minimize(self.loss, global_step=self.global_step)
            self.inc = v1.assign_add(self.global_step, 1)

    def __enter__(self) -> Model:
        self._ctx = self.graph.as_default()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


@pytest.fixture
def model() -> Iterator[Model]:
    """A fresh Model whose graph is the default graph during the test."""
    with Model() as m:
        yield m


def asyncsess_threads() -> list[str]:
    return sorted(
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("asyncsess-", "QueueRunnerThread"))
    )


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    """Fail if the test leaves an asyncsess worker or queue-runner thread alive."""
    yield
    for t in threading.enumerate():
        if t.name.startswith(("asyncsess-", "QueueRunnerThread")):
            t.join(timeout=5)
    assert asyncsess_threads() == []


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    """Undo what `asyncsess._cli.main` does to the loggers (its handler, levels,
    ``propagate = False``), so a later test's caplog still sees their records."""
    names = ("asyncsess", "asyncsess.hooks", "asyncsess.hooks.progress", "tensorflow")
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (logger.level, logger.propagate, list(logger.handlers))
    yield
    for name, (level, propagate, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers
