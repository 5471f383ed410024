"""NanTensorHook: fail or stop on a NaN loss; TensorFlow's error class for both."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import tensorflow as tf

import asyncsess
from asyncsess.hooks import NanLossDuringTrainingError, NanTensorHook

from ..conftest import Model

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio

NAN = float("nan")


class Ends(asyncsess.SessionRunHook):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def end(self, session: Any) -> None:
        self.calls.append("end")

    async def on_error(self, exc: BaseException, session: Any) -> None:
        self.calls.append(f"on_error:{type(exc).__name__}")


def test_error_is_tensorflows_class() -> None:
    assert NanLossDuringTrainingError is v1.train.NanLossDuringTrainingError
    assert issubclass(NanLossDuringTrainingError, RuntimeError)
    assert str(NanLossDuringTrainingError()) == "NaN loss during training."


def test_loss_tensor_is_required() -> None:
    with pytest.raises(TypeError, match="Received: loss_tensor=None"):
        NanTensorHook(None)


async def test_nan_loss_raises(model: Model, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncsess.hooks")
    ends = Ends()
    hook = NanTensorHook(model.y)
    with pytest.raises(v1.train.NanLossDuringTrainingError) as info:
        async with asyncsess.MonitoredSession(hooks=[hook, ends]) as sess:
            await sess.run(model.train_op, feed_dict={model.x: 2.0})
            assert not sess.should_stop()
            await sess.run(model.train_op, feed_dict={model.x: NAN})
            pytest.fail("the NaN step must raise")  # pragma: no cover
    assert type(info.value) is NanLossDuringTrainingError
    assert str(info.value) == "NaN loss during training."
    # TensorFlow's rule: an error skips end(); asyncsess tells on_error instead.
    assert ends.calls == ["on_error:NanLossDuringTrainingError"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "Model diverged with loss = NaN.")
    ]


async def test_nan_loss_requests_stop_when_not_failing(
    model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncsess.hooks")
    ends = Ends()
    hook = NanTensorHook(model.y, fail_on_nan_loss=False)
    async with asyncsess.MonitoredSession(hooks=[hook, ends]) as sess:
        await sess.run(model.train_op, feed_dict={model.x: 1.0})
        assert not sess.should_stop()
        await sess.run(model.train_op, feed_dict={model.x: NAN})
        assert sess.should_stop()
    assert sess.stop_reason is not None
    assert sess.stop_reason.source == "NanTensorHook"
    assert ends.calls == ["end"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Model diverged with loss = NaN.")
    ]


async def test_loss_by_name(model: Model) -> None:
    hook = NanTensorHook(model.y.name, fail_on_nan_loss=False)
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        await sess.run(model.train_op, feed_dict={model.x: NAN})
        assert sess.should_stop()


async def test_tensorflows_hook_is_caught_by_our_class(model: Model) -> None:
    hook = v1.train.NanTensorHook(model.y)
    with pytest.raises(NanLossDuringTrainingError):
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(model.train_op, feed_dict={model.x: NAN})
