"""ProfilerHook: TensorFlow's trigger rules and files, written off the loop, flushed."""

from __future__ import annotations

import json
import threading
import types
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import tensorflow as tf
from tensorflow.python.training import basic_session_run_hooks

import asyncsess
from asyncsess._tf import chrome_trace as asyncsess_chrome_trace
from asyncsess._tf import global_step_read
from asyncsess.hooks import ProfilerHook, _profiler

from ..conftest import Model

if TYPE_CHECKING:
    from pathlib import Path

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio

MOCK_START_TIME = 1484695987.209386


def timelines(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("timeline-*.json"))


def run_metadata_tags(path: Path) -> list[str]:
    return [
        event.tagged_run_metadata.tag
        for events in sorted(path.glob("events.out.tfevents.*"))
        for event in v1.train.summary_iterator(str(events))
        if event.HasField("tagged_run_metadata")
    ]


def ordered_inc(model: Model) -> Any:
    """Increment the step strictly after the hooks' global-step read.

    Without the dependency TensorFlow may run the read before or after the
    increment, and both TF's hook and ours then trigger a step late now and then.
    """
    with model.graph.as_default():
        read = global_step_read()
        with tf.control_dependencies([read]):
            return v1.assign_add(model.global_step, 1)


class TestArguments:
    @pytest.mark.parametrize("cls", [ProfilerHook, v1.train.ProfilerHook])
    def test_same_error_types_as_tensorflow(self, cls: Any, tmp_path: Path) -> None:
        # TensorFlow's opens its event writer when built, which needs a graph.
        with (
            tf.Graph().as_default(),
            pytest.raises(ValueError, match=r"(?i)both|exactly one"),
        ):
            cls(save_secs=10, save_steps=20, output_dir=str(tmp_path))
        with (
            tf.Graph().as_default(),
            pytest.raises(ValueError, match=r"(?i)either|exactly one"),
        ):
            cls(save_secs=None, save_steps=None, output_dir=str(tmp_path))

    def test_messages_name_the_values(self) -> None:
        with pytest.raises(ValueError, match="Received: save_steps=20, save_secs=10"):
            ProfilerHook(save_secs=10, save_steps=20)
        with pytest.raises(ValueError, match="Received: save_steps=-2"):
            ProfilerHook(save_steps=-2)
        with pytest.raises(TypeError, match="Received: save_secs='1'"):
            ProfilerHook(save_secs="1")  # type: ignore[arg-type]

    def test_construction_writes_nothing(self, tmp_path: Path) -> None:
        ProfilerHook(save_steps=1, output_dir=str(tmp_path))
        assert list(tmp_path.iterdir()) == []


async def test_needs_a_global_step(tmp_path: Path) -> None:
    with tf.Graph().as_default():
        v1.constant(1.0)
        hook = ProfilerHook(save_steps=1, output_dir=str(tmp_path))
        with pytest.raises(RuntimeError, match="Global step should be created"):
            async with asyncsess.MonitoredSession(hooks=[hook]):
                pass


async def test_save_secs_does_not_save_in_first_step(
    model: Model, tmp_path: Path
) -> None:
    hook = ProfilerHook(save_secs=2, output_dir=str(tmp_path))
    inc = ordered_inc(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        await sess.run(inc)
        assert timelines(tmp_path) == []


async def test_save_secs_saves_periodically(
    model: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = types.SimpleNamespace(now=MOCK_START_TIME)
    clock.time = lambda: clock.now
    monkeypatch.setattr(basic_session_run_hooks, "time", clock)
    hook = ProfilerHook(save_secs=2, output_dir=str(tmp_path))
    inc = ordered_inc(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for offset, saved in ((0, 0), (2.5, 1), (2.6, 1), (4.4, 1), (4.5, 2)):
            clock.now = MOCK_START_TIME + offset
            await sess.run(inc)
            assert len(timelines(tmp_path)) == saved, offset


async def test_save_steps_does_not_save_in_first_step(
    model: Model, tmp_path: Path
) -> None:
    hook = ProfilerHook(save_steps=1, output_dir=str(tmp_path))
    inc = ordered_inc(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        await sess.run(inc)
        assert timelines(tmp_path) == []


async def test_save_steps_saves_periodically(model: Model, tmp_path: Path) -> None:
    hook = ProfilerHook(save_steps=2, output_dir=str(tmp_path))
    inc = ordered_inc(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        assert timelines(tmp_path) == []
        for saved in (0, 1, 1, 2, 2):
            await sess.run(inc)
            assert len(timelines(tmp_path)) == saved
    assert timelines(tmp_path) == ["timeline-2.json", "timeline-4.json"]
    trace = json.loads((tmp_path / "timeline-2.json").read_text())
    assert trace["traceEvents"]


async def test_run_metadata_saves_and_is_flushed_at_end(
    model: Model, tmp_path: Path
) -> None:
    hook = ProfilerHook(save_steps=1, output_dir=str(tmp_path))
    inc = ordered_inc(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        await sess.run(inc)  # Not saved.
        await sess.run(inc)  # Saved.
    assert run_metadata_tags(tmp_path) == ["step_2"]


async def test_flushed_when_an_error_ends_the_session(
    model: Model, tmp_path: Path
) -> None:
    hook = ProfilerHook(save_steps=1, output_dir=str(tmp_path))
    inc = ordered_inc(model)
    with pytest.raises(KeyError):
        async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
            await sess.run(inc)
            await sess.run(inc)
            raise KeyError("boom")
    assert run_metadata_tags(tmp_path) == ["step_2"]


async def test_flushed_when_a_cancellation_ends_the_session(
    model: Model, tmp_path: Path
) -> None:
    hook = ProfilerHook(save_steps=1, output_dir=str(tmp_path))
    inc = ordered_inc(model)
    with anyio.fail_after(30), anyio.CancelScope() as scope:
        async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
            await sess.run(inc)
            await sess.run(inc)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert run_metadata_tags(tmp_path) == ["step_2"]


async def test_trace_and_write_happen_off_the_loop(
    model: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = asyncsess_chrome_trace

    def recording(*args: Any) -> str:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(_profiler, "chrome_trace", recording)
    hook = ProfilerHook(save_steps=1, output_dir=str(tmp_path))
    inc = ordered_inc(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(3):
            await sess.run(inc)
    assert len(threads) == 2
    assert threading.current_thread().name not in threads
    assert all(name.startswith("asyncsess-worker") for name in threads)


async def test_same_files_as_tensorflow(tmp_path: Path) -> None:
    (tf_dir := tmp_path / "tf").mkdir()
    (our_dir := tmp_path / "ours").mkdir()
    with Model() as m:
        tf_hook = v1.train.ProfilerHook(save_steps=3, output_dir=str(tf_dir))
        inc = ordered_inc(m)
        with v1.train.SingularMonitoredSession(hooks=[tf_hook]) as tf_sess:
            for _ in range(8):
                tf_sess.run(inc)
        v1.summary.FileWriterCache.get(str(tf_dir)).flush()
    with Model() as m:
        hook = ProfilerHook(save_steps=3, output_dir=str(our_dir))
        inc = ordered_inc(m)
        async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
            for _ in range(8):
                await sess.run(inc)
    assert (
        timelines(our_dir)
        == timelines(tf_dir)
        == [
            "timeline-3.json",
            "timeline-6.json",
        ]
    )
    assert run_metadata_tags(our_dir) == run_metadata_tags(tf_dir)
