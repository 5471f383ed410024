"""SummarySaverHook: TensorFlow's triggers, steps and events; flushing on errors."""

from __future__ import annotations

import collections
import glob
import os
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import tensorflow as tf
from tensorflow.python.training import basic_session_run_hooks, training_util

import asyncsess
from asyncsess.hooks import SummarySaverHook

if TYPE_CHECKING:
    from pathlib import Path

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


class FakeTime:
    """Replaces `time` inside TF's hooks module, which holds SecondOrStepTimer."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime(1484695987.209386)
    monkeypatch.setattr(basic_session_run_hooks, "time", clock)
    return clock


class FakeWriter:
    """Records what a hook writes, like TF's fake_summary_writer."""

    def __init__(self) -> None:
        self.summaries: dict[int, dict[str, float]] = collections.defaultdict(dict)
        self.session_logs: list[tuple[int, int]] = []
        self.flushes = 0
        self.threads: set[str] = set()

    def add_summary(self, summary: Any, global_step: int) -> None:
        self.threads.add(threading.current_thread().name)
        if isinstance(summary, bytes):
            summary = v1.Summary.FromString(summary)
        for value in summary.value:
            self.summaries[global_step][value.tag] = value.simple_value

    def add_session_log(self, session_log: Any, global_step: int) -> None:
        self.session_logs.append((session_log.status, global_step))

    def flush(self) -> None:
        self.flushes += 1


class Graph:
    """TF's SummarySaverHookTest graph: a summary of a counter bumped when fetched."""

    def __init__(self) -> None:
        self.graph = tf.Graph()
        with self.graph.as_default():
            var = v1.Variable(0.0)
            tensor = v1.assign_add(var, 1.0)
            self.summary_op = v1.summary.scalar("my_summary", tensor)
            self.summary_op2 = v1.summary.scalar("my_summary2", tensor * 2)
            v1.train.get_or_create_global_step()
            # Ordered after the hook's read of the step, as TF's own test builds
            # it: a plain assign_add left the recorded step to TF's scheduling.
            self.train_op = training_util._increment_global_step(1)


@pytest.fixture
def g() -> Any:
    graph = Graph()
    with graph.graph.as_default():
        yield graph


async def run_steps(hook: Any, train_op: Any, n: int, clock: Any = None) -> None:
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(n):
            await sess.run(train_op)
            if clock is not None:
                clock.now += clock.advance


class TestArguments:
    def test_scaffold_and_summary_op_both_missing(self) -> None:
        with pytest.raises(
            ValueError, match="Received: scaffold=None, summary_op=None"
        ):
            SummarySaverHook(save_steps=1)

    def test_scaffold_and_summary_op_both_present(self, g: Graph) -> None:
        with pytest.raises(ValueError, match="Exactly one of scaffold or summary_op"):
            SummarySaverHook(
                save_steps=1, scaffold=v1.train.Scaffold(), summary_op=g.summary_op
            )

    def test_secs_and_steps(self, g: Graph) -> None:
        with pytest.raises(ValueError, match="save_secs=10, save_steps=20"):
            SummarySaverHook(save_secs=10, save_steps=20, summary_op=g.summary_op)
        with pytest.raises(ValueError, match="save_secs=None, save_steps=None"):
            SummarySaverHook(summary_op=g.summary_op)
        with pytest.raises(ValueError, match="Received: save_steps=-8"):
            SummarySaverHook(save_steps=-8, summary_op=g.summary_op)

    def test_tf_raises_the_same_types(self, g: Graph) -> None:
        with pytest.raises(ValueError, match="Exactly one of scaffold or summary_op"):
            v1.train.SummarySaverHook(save_steps=1)
        with pytest.raises(ValueError, match="Can not provide both"):
            v1.train.SummarySaverHook(
                save_secs=10, save_steps=20, summary_op=g.summary_op
            )


async def test_save_steps(g: Graph) -> None:
    writer = FakeWriter()
    hook = SummarySaverHook(
        save_steps=8, summary_writer=writer, summary_op=g.summary_op
    )
    await run_steps(hook, g.train_op, 30)
    assert writer.summaries == {
        1: {"my_summary": 1.0},
        9: {"my_summary": 2.0},
        17: {"my_summary": 3.0},
        25: {"my_summary": 4.0},
    }
    assert writer.session_logs == [(v1.SessionLog.START, 1)]
    assert writer.flushes == 1  # at end
    assert threading.current_thread().name not in writer.threads


async def test_multiple_summaries(g: Graph) -> None:
    writer = FakeWriter()
    hook = SummarySaverHook(
        save_steps=8, summary_writer=writer, summary_op=[g.summary_op, g.summary_op2]
    )
    await run_steps(hook, g.train_op, 10)
    assert writer.summaries == {
        1: {"my_summary": 1.0, "my_summary2": 2.0},
        9: {"my_summary": 2.0, "my_summary2": 4.0},
    }


@pytest.mark.parametrize(
    ("secs", "advance", "runs", "expected"),
    [
        (0.5, 0.5, 4, {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}),
        (9.0, 3.1, 8, {1: 1.0, 4: 2.0, 7: 3.0}),
    ],
)
async def test_save_secs(
    g: Graph,
    fake_time: Any,
    secs: float,
    advance: float,
    runs: int,
    expected: dict[int, float],
) -> None:
    writer = FakeWriter()
    hook = SummarySaverHook(
        save_secs=secs, summary_writer=writer, summary_op=g.summary_op
    )
    fake_time.advance = advance
    await run_steps(hook, g.train_op, runs, fake_time)
    assert writer.summaries == {k: {"my_summary": v} for k, v in expected.items()}


async def test_summary_op_from_scaffold(g: Graph) -> None:
    writer = FakeWriter()
    scaffold = v1.train.Scaffold(summary_op=g.summary_op)
    hook = SummarySaverHook(save_steps=2, summary_writer=writer, scaffold=scaffold)
    async with asyncsess.SingularMonitoredSession(hooks=[hook], scaffold=scaffold) as s:
        for _ in range(3):
            await s.run(g.train_op)
    assert sorted(writer.summaries) == [1, 3]


def event_pairs(directory: Path) -> list[tuple[str, int]]:
    """(tag, step) of every summary value in *directory*'s event files."""
    return [
        (value.tag, event.step)
        for path in sorted(glob.glob(os.path.join(str(directory), "events.out.*")))
        for event in v1.train.summary_iterator(path)
        for value in event.summary.value
    ]


async def test_event_files_in_output_dir(g: Graph, tmp_path: Path) -> None:
    hook = SummarySaverHook(
        save_steps=2, output_dir=str(tmp_path), summary_op=g.summary_op
    )
    await run_steps(hook, g.train_op, 5)
    assert event_pairs(tmp_path) == [
        ("my_summary", 1),
        ("my_summary", 3),
        ("my_summary", 5),
    ]


class Boom(Exception):
    pass


async def test_flushes_when_an_error_ends_the_session(g: Graph, tmp_path: Path) -> None:
    # TF's FileWriter flushes every 120 s or 10 events: without a flush on the
    # error path, a short run that fails leaves an empty event file.
    hook = SummarySaverHook(
        save_steps=1, output_dir=str(tmp_path), summary_op=g.summary_op
    )
    with pytest.raises(Boom):
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(g.train_op)
            await sess.run(g.train_op)
            raise Boom
    assert event_pairs(tmp_path) == [("my_summary", 1), ("my_summary", 2)]


async def test_flushes_when_cancelled(g: Graph, tmp_path: Path) -> None:
    hook = SummarySaverHook(
        save_steps=1, output_dir=str(tmp_path), summary_op=g.summary_op
    )
    with anyio.fail_after(30), anyio.CancelScope() as scope:
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(g.train_op)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert event_pairs(tmp_path) == [("my_summary", 1)]
