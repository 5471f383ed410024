"""ProgressBarHook: a rich bar on a terminal, log lines elsewhere, on both backends."""

from __future__ import annotations

import io
import logging
import sys
from typing import TYPE_CHECKING, Any

import pytest
import tensorflow as tf

import asyncsess
from asyncsess._tf import global_step_read
from asyncsess.hooks import ProgressBarHook
from asyncsess.hooks._progress import Progress, RateMeter, format_value

if TYPE_CHECKING:
    from collections.abc import Iterator

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio
PROGRESS_LOGGER = "asyncsess.hooks.progress"


class Model:
    """A tiny model built under the global-step read, as Estimator builds models.

    So the step the hook reads is always the value before the step's increment
    (without the dependency TensorFlow may run the read after it).
    """

    def __init__(self) -> None:
        self.graph = tf.Graph()
        with self.graph.as_default():
            step = v1.train.get_or_create_global_step()
            with tf.control_dependencies([global_step_read(self.graph)]):
                self.w = v1.get_variable("w", initializer=1.0)
                self.loss = tf.square(self.w - 3.0)
                opt = v1.train.GradientDescentOptimizer(0.1)
                self.train_op = opt.minimize(self.loss, global_step=step)


@pytest.fixture
def model() -> Iterator[Model]:
    m = Model()
    with m.graph.as_default():
        yield m


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


async def train(model: Model, hook: ProgressBarHook, last_step: int = 5) -> None:
    hooks = [hook, v1.train.StopAtStepHook(last_step=last_step)]
    async with asyncsess.MonitoredSession(hooks=hooks) as sess:
        while not sess.should_stop():
            await sess.run(model.train_op)


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]


class TestLogLines:
    async def test_every_update_when_log_every_secs_is_0(
        self, model: Model, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, PROGRESS_LOGGER)
        stream = io.StringIO()
        hook = ProgressBarHook(
            5, every_n_steps=2, tensors={"loss": model.loss}, stream=stream
        )
        hook.log_every_secs = 0
        await train(model, hook)
        lines = progress_lines(caplog)
        assert [line.split(" (")[0] for line in lines] == [
            "step 1/5",
            "step 3/5",
            "step 5/5",
        ]
        assert lines[0].startswith("step 1/5 (20%) loss=")
        assert "-- steps/s ETA --" in lines[0]
        assert "steps/s ETA 0:00:00" in lines[-1]
        assert stream.getvalue() == ""

    async def test_throttled_lines_end_with_the_last_step(
        self, model: Model, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, PROGRESS_LOGGER)
        hook = ProgressBarHook(stream=io.StringIO(), log_every_secs=3600)
        await train(model, hook, last_step=4)
        # The first update, then (held back by the interval) the last at the end.
        assert progress_lines(caplog) == [
            "step 1 -- steps/s",
            progress_lines(caplog)[1],
        ]
        assert progress_lines(caplog)[1].startswith("step 4 ")

    async def test_the_last_line_reads_the_step_exactly(
        self, model: Model, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, PROGRESS_LOGGER)
        hook = ProgressBarHook(20, stream=io.StringIO(), log_every_secs=0)
        with model.graph.as_default():
            jump = v1.assign_add(v1.train.get_global_step(), 10)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(3):
                await sess.run(model.train_op)
            await sess.run_without_hooks(jump)  # the hook does not see this one
        lines = progress_lines(caplog)
        assert [line.split(" (")[0] for line in lines] == [
            "step 1/20",
            "step 2/20",
            "step 3/20",
            "step 13/20",
        ]

    async def test_tensors_by_name(
        self, model: Model, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, PROGRESS_LOGGER)
        hook = ProgressBarHook(
            3, tensors=[model.w.name], stream=io.StringIO(), log_every_secs=0
        )
        await train(model, hook, last_step=3)
        assert f"{model.w.name}=" in progress_lines(caplog)[0]

    async def test_without_rich_a_terminal_gets_log_lines(
        self,
        model: Model,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setitem(sys.modules, "rich.console", None)
        monkeypatch.setitem(sys.modules, "rich.progress", None)
        caplog.set_level(logging.INFO, PROGRESS_LOGGER)
        stream = Terminal()
        await train(model, ProgressBarHook(5, stream=stream, log_every_secs=0))
        assert "Install 'rich' for a live progress bar" in caplog.text
        assert progress_lines(caplog)[-1].startswith("step 5/5 (100%)")
        assert stream.getvalue() == ""


class TestBar:
    async def test_a_terminal_gets_a_bar(
        self, model: Model, caplog: pytest.LogCaptureFixture
    ) -> None:
        pytest.importorskip("rich")
        caplog.set_level(logging.INFO, PROGRESS_LOGGER)
        stream = Terminal()
        hook = ProgressBarHook(5, tensors={"loss": model.loss}, stream=stream)
        await train(model, hook)
        text = stream.getvalue()
        assert "5/5" in text
        assert "loss=" in text
        assert "steps/s" in text
        assert "ETA" in text
        assert progress_lines(caplog) == []

    async def test_an_error_closes_the_bar(self, model: Model) -> None:
        pytest.importorskip("rich")
        hook = ProgressBarHook(5, stream=Terminal())
        with pytest.raises(ValueError, match="boom"):
            async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
                await sess.run(model.train_op)
                raise ValueError("boom")
        assert hook._display is None


class TestArguments:
    async def test_needs_a_global_step(self) -> None:
        with tf.Graph().as_default():
            v = v1.get_variable("v", initializer=1.0)
            session = asyncsess.MonitoredSession(hooks=[ProgressBarHook()])
        with pytest.raises(RuntimeError, match="Global step should be created"):
            async with session as sess:
                await sess.run(v)

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"every_n_steps": 0}, ValueError, "every_n_steps must be >= 1"),
            ({"every_n_steps": "2"}, TypeError, "Received: every_n_steps='2'"),
            ({"last_step": -1}, ValueError, "last_step must be >= 0"),
            ({"log_every_secs": -1.0}, ValueError, "log_every_secs must be >= 0"),
        ],
    )
    async def test_bad_arguments(
        self, kwargs: dict[str, Any], error: type[Exception], match: str
    ) -> None:
        with pytest.raises(error, match=match):
            ProgressBarHook(**kwargs)


class TestPieces:
    async def test_rate_over_a_window(self) -> None:
        meter = RateMeter()
        assert meter.per_sec() is None
        meter.add(100.0, 10)
        assert meter.per_sec() is None
        meter.add(101.0, 20)
        meter.add(102.0, 40)
        assert meter.per_sec() == 15.0
        meter.add(110.0, 50)  # older samples fall out of the 5 s window
        assert meter.per_sec() == pytest.approx(10 / 8)

    async def test_line_and_eta(self) -> None:
        progress = Progress(50, 100, {"loss": 0.123456}, 10.0)
        assert (
            progress.line() == "step 50/100 (50%) loss=0.1235 10.0 steps/s ETA 0:00:05"
        )
        assert Progress(7, None, {}, None).line() == "step 7 -- steps/s"

    async def test_format_value(self) -> None:
        import numpy as np

        assert format_value(np.float32(0.5)) == "0.5"
        assert format_value(np.int64(3)) == "3"
        assert format_value(np.array([1.0, 2.0])) == "[1.0, 2.0]"
        assert format_value(np.arange(100)).endswith("...")
        assert format_value(b"x") == "b'x'"
