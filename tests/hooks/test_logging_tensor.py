"""LoggingTensorHook: TensorFlow's trigger rules and the very same log lines."""

from __future__ import annotations

import logging
import re
import types
from typing import TYPE_CHECKING, Any

import pytest
import tensorflow as tf
from tensorflow.python.training import basic_session_run_hooks

import asyncsess
from asyncsess.hooks import LoggingTensorHook

if TYPE_CHECKING:
    from collections.abc import Iterator

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio

MOCK_START_TIME = 1484695987.209386


class Lines:
    """The tensor lines logged (by either hook) on TensorFlow's logger."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def take(self) -> list[str]:
        records = [r for r in self.caplog.records if r.funcName == "_log_tensors"]
        self.caplog.clear()
        assert all(
            r.name == "tensorflow" and r.levelno == logging.INFO for r in records
        )
        return [r.getMessage() for r in records]


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    caplog.set_level(logging.INFO, logger="tensorflow")
    return Lines(caplog)


@pytest.fixture
def graph() -> Iterator[tf.Graph]:
    with tf.Graph().as_default() as g:
        yield g


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A fake clock for TensorFlow's SecondOrStepTimer (ours uses TF's own)."""
    fake = types.SimpleNamespace(now=MOCK_START_TIME)
    fake.time = lambda: fake.now
    monkeypatch.setattr(basic_session_run_hooks, "time", fake)
    return fake


class TestArguments:
    @pytest.mark.parametrize("cls", [LoggingTensorHook, v1.train.LoggingTensorHook])
    def test_same_errors_as_tensorflow(self, cls: Any) -> None:
        with pytest.raises(ValueError, match="nvalid every_n_iter"):
            cls(tensors=["t"], every_n_iter=0)
        with pytest.raises(ValueError, match="nvalid every_n_iter"):
            cls(tensors=["t"], every_n_iter=-10)
        with pytest.raises(ValueError, match="xactly one of"):
            cls(tensors=["t"], every_n_iter=5, every_n_secs=5)
        with pytest.raises(ValueError, match="xactly one of"):
            cls(tensors=["t"])

    def test_messages_name_the_values(self) -> None:
        with pytest.raises(ValueError, match="Received: every_n_iter=0"):
            LoggingTensorHook(tensors=["t"], every_n_iter=0)
        with pytest.raises(
            ValueError,
            match="Received: every_n_iter=5, every_n_secs=5, at_end=False",
        ):
            LoggingTensorHook(tensors=["t"], every_n_iter=5, every_n_secs=5)
        with pytest.raises(ValueError, match=r"Received: every_n_secs=-1\.0"):
            LoggingTensorHook(tensors=["t"], every_n_secs=-1.0)

    def test_type_errors(self) -> None:
        with pytest.raises(TypeError, match="Received: tensors='loss'"):
            LoggingTensorHook(tensors="loss", every_n_iter=1)
        with pytest.raises(TypeError, match="Received: formatter='x'"):
            LoggingTensorHook(tensors=["t"], every_n_iter=1, formatter="x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Received: every_n_iter='2'"):
            LoggingTensorHook(tensors=["t"], every_n_iter="2")  # type: ignore[arg-type]

    def test_at_end_alone_is_enough(self) -> None:
        LoggingTensorHook(tensors=["t"], at_end=True)


async def test_print_at_end_only(graph: tf.Graph, lines: Lines) -> None:
    t = tf.constant(42.0, name="foo")
    train_op = tf.constant(3)
    hook = LoggingTensorHook(tensors=[t.name], at_end=True)
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        for _ in range(3):
            await sess.run(train_op)
            assert lines.take() == []
    assert lines.take() == ["foo:0 = 42.0"]


@pytest.mark.parametrize("at_end", [False, True])
async def test_print_every_n_steps(graph: tf.Graph, lines: Lines, at_end: bool) -> None:
    t = tf.constant(42.0, name="foo")
    train_op = tf.constant(3)
    hook = LoggingTensorHook(tensors=[t.name], every_n_iter=10, at_end=at_end)
    # Twice with the same hook: begin() resets the local step count.
    for _ in range(2):
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(train_op)
            assert lines.take() == ["foo:0 = 42.0"]
            for _ in range(3):
                for _ in range(9):
                    await sess.run(train_op)
                    assert lines.take() == []
                await sess.run(train_op)
                [line] = lines.take()
                assert re.fullmatch(r"foo:0 = 42\.0 \(\d+\.\d{3} sec\)", line)
            await sess.run(train_op)
            assert lines.take() == []
        assert len(lines.take()) == (1 if at_end else 0)


async def test_print_first_step(graph: tf.Graph, lines: Lines) -> None:
    t = tf.constant(42.0, name="foo")
    train_op = tf.constant(3)
    hook = LoggingTensorHook(tensors={"foo": t}, every_n_iter=1)
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        await sess.run(train_op)
        # The first line has no elapsed time.
        assert lines.take() == ["foo = 42.0"]


@pytest.mark.parametrize("at_end", [False, True])
async def test_print_every_n_secs(
    graph: tf.Graph, lines: Lines, clock: types.SimpleNamespace, at_end: bool
) -> None:
    t = tf.constant(42.0, name="foo")
    train_op = tf.constant(3)
    hook = LoggingTensorHook(tensors=[t.name], every_n_secs=1.0, at_end=at_end)
    for _ in range(2):
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(train_op)
            assert lines.take() == ["foo:0 = 42.0"]
            await sess.run(train_op)
            assert lines.take() == []
            clock.now += 1.0
            await sess.run(train_op)
            assert lines.take() == ["foo:0 = 42.0 (1.000 sec)"]
        assert lines.take() == (["foo:0 = 42.0 (0.000 sec)"] if at_end else [])


async def test_print_formatter(graph: tf.Graph, lines: Lines) -> None:
    t = tf.constant(42.0, name="foo")
    hook = LoggingTensorHook(
        tensors=[t.name],
        every_n_iter=10,
        formatter=lambda items: f"qqq={items[t.name]}",
    )
    train_op = tf.constant(3)
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        await sess.run(train_op)
    assert lines.take() == ["qqq=42.0"]


def build() -> tuple[Any, dict[str, Any]]:
    step = v1.get_variable("n", initializer=0, trainable=False)
    zeta = step.read_value()
    # The increment waits for the logged read: unordered, the value logged
    # would be TF's scheduling (either the step before or after the run).
    with tf.control_dependencies([zeta]):
        train_op = v1.assign_add(step, 1)
    small = tf.constant([1e-5, 1.0, 250.5], name="small")
    return train_op, {"zeta": zeta, "alpha": small, "mid": "small:0"}


def run_tf(kwargs: dict[str, Any], runs: int) -> None:
    with tf.Graph().as_default():
        train_op, tensors = build()
        hook = v1.train.LoggingTensorHook(tensors, **kwargs)
        with v1.train.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(runs):
                sess.run(train_op)


async def run_ours(kwargs: dict[str, Any], runs: int) -> None:
    with tf.Graph().as_default():
        train_op, tensors = build()
        hook = LoggingTensorHook(tensors, **kwargs)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(runs):
                await sess.run(train_op)


def normalized(messages: list[str]) -> list[str]:
    return [re.sub(r"\(\d+\.\d{3} sec\)", "(T sec)", m) for m in messages]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"every_n_iter": 3},
        {"every_n_iter": 4, "at_end": True},
        {"at_end": True},
        {"every_n_iter": 2, "formatter": lambda v: f"zeta is {v['zeta']}"},
    ],
    ids=["every_3", "every_4_and_end", "at_end", "formatter"],
)
async def test_same_lines_as_tensorflow(lines: Lines, kwargs: dict[str, Any]) -> None:
    run_tf(kwargs, runs=10)
    expected = normalized(lines.take())
    await run_ours(kwargs, runs=10)
    got = normalized(lines.take())
    assert got == expected
    assert got  # the comparison compared something


async def test_list_keeps_its_order(graph: tf.Graph, lines: Lines) -> None:
    b = tf.constant(2, name="b")
    a = tf.constant(1, name="a")
    hook = LoggingTensorHook([b.name, a.name], every_n_iter=1)
    no_op = tf.no_op()
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        await sess.run(no_op)
    assert lines.take() == ["b:0 = 2, a:0 = 1"]
