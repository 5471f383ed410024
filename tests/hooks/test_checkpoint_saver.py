"""CheckpointSaverHook: TF's triggers, listeners and files; errors; background."""

from __future__ import annotations

import collections
import glob
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import tensorflow as tf
from tensorflow.python.training import basic_session_run_hooks, training_util

import asyncsess
from asyncsess.hooks import CheckpointSaverHook, CheckpointSaverListener
from asyncsess.hooks._writers import ShadowSnapshot

from ..conftest import Model

if TYPE_CHECKING:
    from pathlib import Path

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


# -- helpers -------------------------------------------------------------------


def latest_step(directory: Path) -> int | None:
    """The global step stored in the latest checkpoint of *directory*."""
    path = tf.train.latest_checkpoint(str(directory))
    return None if path is None else int(tf.train.load_variable(path, "global_step"))


def kept_steps(directory: Path) -> list[int]:
    """The steps of the checkpoints the `checkpoint` state file lists."""
    state = tf.train.get_checkpoint_state(str(directory))
    if state is None:
        return []
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


def checkpoint_events(directory: Path) -> list[int]:
    """Steps of the SessionLog.CHECKPOINT events in *directory*'s event files."""
    return [
        event.step
        for path in sorted(glob.glob(os.path.join(str(directory), "events.out.*")))
        for event in v1.train.summary_iterator(path)
        if event.HasField("session_log")
        and event.session_log.status == v1.SessionLog.CHECKPOINT
    ]


def has_file(directory: Path, name: str) -> bool:
    return os.path.exists(os.path.join(str(directory), name))


class FakeTime:
    """Replaces `time` inside TF's hooks module, which holds SecondOrStepTimer."""

    def __init__(self) -> None:
        self.now = 1484695987.209386

    def time(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(basic_session_run_hooks, "time", clock)
    return clock


class Counts:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.ask_for_stop = False
        self.threads: set[str] = set()

    def hit(self, name: str) -> None:
        self.counts[name] += 1
        self.threads.add(threading.current_thread().name)


class AsyncListener(CheckpointSaverListener, Counts):
    def __init__(self) -> None:
        Counts.__init__(self)

    async def begin(self) -> None:
        self.hit("begin")

    async def before_save(self, session: Any, global_step_value: int) -> None:
        self.hit("before_save")

    async def after_save(self, session: Any, global_step_value: int) -> bool:
        self.hit("after_save")
        return self.ask_for_stop

    async def end(self, session: Any, global_step_value: int) -> None:
        self.hit("end")


class TFListener(v1.train.CheckpointSaverListener, Counts):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        Counts.__init__(self)

    def begin(self) -> None:
        self.hit("begin")

    def before_save(self, session: Any, global_step_value: int) -> None:
        self.hit("before_save")

    def after_save(self, session: Any, global_step_value: int) -> bool:
        self.hit("after_save")
        return self.ask_for_stop

    def end(self, session: Any, global_step_value: int) -> None:
        self.hit("end")


EXPECTED_COUNTS = {"begin": 1, "before_save": 3, "after_save": 3, "end": 1}


# -- arguments -----------------------------------------------------------------


class TestArguments:
    def test_neither_secs_nor_steps(self, tmp_path: Path) -> None:
        with pytest.raises(
            ValueError, match="Received: save_secs=None, save_steps=None"
        ):
            CheckpointSaverHook(str(tmp_path))

    def test_both_secs_and_steps(self, tmp_path: Path) -> None:
        with pytest.raises(
            ValueError,
            match=r"Can not provide both save_secs .*save_secs=10, save_steps=20",
        ):
            CheckpointSaverHook(str(tmp_path), save_secs=10, save_steps=20)

    def test_saver_and_scaffold(self, tmp_path: Path) -> None:
        with tf.Graph().as_default():
            v1.train.get_or_create_global_step()
            saver = v1.train.Saver()
        with pytest.raises(ValueError, match=r"both saver and scaffold\. Received: "):
            CheckpointSaverHook(
                str(tmp_path), save_steps=1, saver=saver, scaffold=v1.train.Scaffold()
            )

    def test_negative_and_bad_types(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="Received: save_steps=-1"):
            CheckpointSaverHook(str(tmp_path), save_steps=-1)
        with pytest.raises(TypeError, match="Received: save_secs='10'"):
            CheckpointSaverHook(str(tmp_path), save_secs="10")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Received: checkpoint_dir=None"):
            CheckpointSaverHook(None, save_steps=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"Received: listeners\[1\]=42"):
            CheckpointSaverHook(
                str(tmp_path), save_steps=1, listeners=[AsyncListener(), 42]
            )

    def test_tf_raises_the_same_types(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="Either every_secs or every_steps"):
            v1.train.CheckpointSaverHook(str(tmp_path))
        with pytest.raises(ValueError, match="Can not provide both"):
            v1.train.CheckpointSaverHook(str(tmp_path), save_secs=10, save_steps=20)


async def test_needs_a_global_step(tmp_path: Path) -> None:
    with tf.Graph().as_default():
        v1.get_variable("w", initializer=1.0)
        hook = CheckpointSaverHook(str(tmp_path), save_steps=1)
        with pytest.raises(RuntimeError, match="Global step should be created"):
            async with asyncsess.MonitoredSession(hooks=[hook]):
                pass


# -- triggers ------------------------------------------------------------------


async def test_saves_before_first_step_with_graph_files(
    model: Model, tmp_path: Path
) -> None:
    hook = CheckpointSaverHook(str(tmp_path), save_steps=2)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        assert latest_step(tmp_path) == 0
        assert has_file(tmp_path, "graph.pbtxt")
        assert len(glob.glob(str(tmp_path / "*.meta"))) == 1
        await sess.run(model.train_op, {model.x: 1.0})
        assert latest_step(tmp_path) == 0
        await sess.run(model.train_op, {model.x: 1.0})
        assert latest_step(tmp_path) == 2
        assert len(glob.glob(str(tmp_path / "*.meta"))) == 2


async def test_save_steps_saves_periodically(model: Model, tmp_path: Path) -> None:
    hook = CheckpointSaverHook(str(tmp_path), save_steps=2)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        seen = []
        for _ in range(5):
            await sess.run(model.inc)
            seen.append(latest_step(tmp_path))
    assert seen == [0, 2, 2, 4, 4]
    assert latest_step(tmp_path) == 5  # saved at end
    assert kept_steps(tmp_path) == [0, 2, 4, 5]
    assert checkpoint_events(tmp_path) == [0, 2, 4, 5]


async def test_steps_larger_than_one_per_run(tmp_path: Path) -> None:
    # TF's CheckpointSaverHookMultiStepTest: the step grows by 5 per run.
    with tf.Graph().as_default():
        v1.train.get_or_create_global_step()
        train_op = training_util._increment_global_step(5)  # after the hook's read
        hook = CheckpointSaverHook(str(tmp_path), save_steps=10)
        async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
            seen = []
            for _ in range(5):
                await sess.run(train_op)
                seen.append(latest_step(tmp_path))
    assert seen == [0, 10, 10, 20, 20]
    assert latest_step(tmp_path) == 25


async def tf_saved_steps(directory: Path, save_steps: int, runs: int) -> list[int]:
    """The steps TF's own hook saves at, on the conftest Model, for comparison."""

    def train() -> None:
        with Model() as model:
            hook = v1.train.CheckpointSaverHook(str(directory), save_steps=save_steps)
            with v1.train.SingularMonitoredSession(hooks=[hook]) as sess:
                for _ in range(runs):
                    sess.run(model.train_op, {model.x: 1.0})

    await anyio.to_thread.run_sync(train)
    return kept_steps(directory)


@pytest.mark.parametrize("save_steps", [1, 3, 4])
async def test_save_steps_parity_with_tf(
    model: Model, tmp_path: Path, save_steps: int
) -> None:
    # conftest's train_op reads the step concurrently with its increment, so the
    # fetched step is sometimes the one before the run, sometimes the one after:
    # the saves must still land on TF's steps (TF re-reads the step every run).
    hook = CheckpointSaverHook(str(tmp_path / "ours"), save_steps=save_steps)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(9):
            await sess.run(model.train_op, {model.x: 1.0})
    expected = await tf_saved_steps(tmp_path / "tf", save_steps, 9)
    assert kept_steps(tmp_path / "ours") == expected


async def test_save_secs_saves_periodically(
    model: Model, tmp_path: Path, fake_time: FakeTime
) -> None:
    hook = CheckpointSaverHook(str(tmp_path), save_secs=2)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        seen = []
        for advance in (0.5, 0.0, 2.0, 0.1, 0.1, 7.3):
            fake_time.now += advance
            await sess.run(model.inc)
            seen.append(latest_step(tmp_path))
        fake_time.now += 0.5
    assert seen == [0, 0, 3, 3, 3, 6]
    assert latest_step(tmp_path) == 6  # the last step was saved: no save at end


async def test_save_secs_saves_at_end(model: Model, tmp_path: Path) -> None:
    hook = CheckpointSaverHook(str(tmp_path), save_secs=600)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        await sess.run(model.inc)
        await sess.run(model.inc)
        assert latest_step(tmp_path) == 0
    assert latest_step(tmp_path) == 2


async def test_uses_the_given_saver_and_basename(model: Model, tmp_path: Path) -> None:
    saver = v1.train.Saver(max_to_keep=2)
    hook = CheckpointSaverHook(
        str(tmp_path), save_steps=1, saver=saver, checkpoint_basename="m.ckpt"
    )
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(3):
            await sess.run(model.inc)
    assert kept_steps(tmp_path) == [2, 3]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("m.ckpt-3")


async def test_save_graph_def_false(model: Model, tmp_path: Path) -> None:
    hook = CheckpointSaverHook(str(tmp_path), save_steps=1, save_graph_def=False)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        await sess.run(model.inc)
    assert not has_file(tmp_path, "graph.pbtxt")
    assert glob.glob(str(tmp_path / "*.meta")) == []
    assert latest_step(tmp_path) == 1


# -- listeners -----------------------------------------------------------------


@pytest.mark.parametrize("kinds", ["async", "tf", "mixed"])
async def test_listener_counts(model: Model, tmp_path: Path, kinds: str) -> None:
    listeners: list[Any] = {  # type: ignore[assignment]
        "async": [AsyncListener()],
        "tf": [TFListener()],
        "mixed": [TFListener(), AsyncListener()],
    }[kinds]
    hook = CheckpointSaverHook(str(tmp_path), save_steps=1, listeners=listeners)
    async with asyncsess.SingularMonitoredSession(
        hooks=[hook], checkpoint_dir=str(tmp_path)
    ) as sess:
        await sess.run(model.inc)
        await sess.run(model.inc)
    for listener in listeners:
        assert dict(listener.counts) == EXPECTED_COUNTS
    for listener in listeners:
        if isinstance(listener, TFListener):  # TF's sync listeners: off the loop
            assert threading.current_thread().name not in listener.threads


@pytest.mark.parametrize("listener_type", [AsyncListener, TFListener])
async def test_listener_stops_training_in_after_save(
    model: Model, tmp_path: Path, listener_type: type[Any]
) -> None:
    listener = listener_type()
    hook = CheckpointSaverHook(str(tmp_path), save_steps=1, listeners=[listener])
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        await sess.run(model.inc)
        assert not sess.should_stop()
        listener.ask_for_stop = True
        await sess.run(model.inc)
        assert sess.should_stop()


# -- errors, cancellation and flushing -------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("save_on_error", [True, False])
async def test_save_on_error(model: Model, tmp_path: Path, save_on_error: bool) -> None:
    hook = CheckpointSaverHook(
        str(tmp_path), save_secs=600, save_on_error=save_on_error
    )
    with pytest.raises(Boom):
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(3):
                await sess.run(model.inc)
            raise Boom
    assert latest_step(tmp_path) == (3 if save_on_error else 0)
    # The event writer was flushed although the session ended with an error.
    assert checkpoint_events(tmp_path) == ([0, 3] if save_on_error else [0])


async def test_save_on_cancellation(model: Model, tmp_path: Path) -> None:
    hook = CheckpointSaverHook(str(tmp_path), save_secs=600, save_on_error=True)
    with anyio.fail_after(30), anyio.CancelScope() as scope:
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(model.inc)
            await sess.run(model.inc)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert latest_step(tmp_path) == 2
    assert checkpoint_events(tmp_path) == [0, 2]


async def test_on_error_without_a_session_skips_the_save(
    model: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = CheckpointSaverHook(str(tmp_path), save_secs=600, save_on_error=True)
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        await sess.run(model.inc)
        await hook.on_error(Boom(), None)
    assert "No final checkpoint after Boom" in caplog.text


# -- background writes -------------------------------------------------------------


class GatedSaver:
    """Wraps `Saver.save`: the save of a step can be held at a gate, or fail."""

    def __init__(self, saver: Any) -> None:
        self.saver = saver
        self.real_save = saver.save
        self.hold: dict[int, threading.Event] = {}
        self.fail: dict[int, BaseException] = {}
        self._entered: dict[int, threading.Event] = {}
        self.threads: list[str] = []
        saver.save = self.save

    def entered(self, step: int) -> threading.Event:
        """Set once the save of *step* has begun."""
        return self._entered.setdefault(step, threading.Event())

    def save(self, sess: Any, path: str, global_step: int, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        self.entered(global_step).set()
        if global_step in self.hold:
            self.hold[global_step].wait(30)
        if global_step in self.fail:
            raise self.fail[global_step]
        return self.real_save(sess, path, global_step=global_step, **kwargs)


class Release(v1.train.SessionRunHook):  # type: ignore[misc,name-defined]
    """A TF hook whose end() opens a gate (hooks end in list order)."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def end(self, session: Any) -> None:
        self.gate.set()


@pytest.fixture
def gated(model: Model) -> GatedSaver:
    return GatedSaver(v1.train.Saver(max_to_keep=10))


def background_hook(tmp_path: Path, gated: GatedSaver, save_steps: int) -> Any:
    return CheckpointSaverHook(
        str(tmp_path), save_steps=save_steps, saver=gated.saver, background_write=True
    )


async def test_background_write_files_and_restore(
    model: Model, tmp_path: Path, gated: GatedSaver
) -> None:
    hook = background_hook(tmp_path, gated, save_steps=2)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(5):
            await sess.run(model.train_op, {model.x: 1.0})
        w = await sess.run(model.w)
    # Step 5 is saved by end(), synchronously on the worker thread.
    assert all(name.startswith("asyncsess-checkpoint-") for name in gated.threads[:3])
    assert kept_steps(tmp_path) == [0, 2, 4, 5]
    assert checkpoint_events(tmp_path) == [0, 2, 4, 5]
    with tf.Graph().as_default():
        step = v1.train.get_or_create_global_step()
        var = v1.get_variable("w", initializer=0.0)
        with v1.Session() as raw:
            v1.train.Saver().restore(raw, tf.train.latest_checkpoint(str(tmp_path)))
            assert raw.run([step, var]) == [5, w]


async def test_background_write_is_a_consistent_snapshot(
    model: Model, tmp_path: Path, gated: GatedSaver
) -> None:
    hook = background_hook(tmp_path, gated, save_steps=3)
    gated.hold[3] = threading.Event()
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(3):
            await sess.run(model.train_op, {model.x: 1.0})  # the 3rd saves step 3
        w3 = await sess.run_without_hooks(model.w)
        # Training goes on and changes the variables while the write waits.
        for _ in range(2):
            await sess.run(model.train_op, {model.x: 1.0})
        assert await sess.run_without_hooks(model.w) != w3
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(gated.entered(3).wait)
        assert latest_step(tmp_path) == 0  # `checkpoint` names step 3 only when done
        gated.hold[3].set()
    path = os.path.join(str(tmp_path), "model.ckpt-3")
    assert tf.train.load_variable(path, "w") == w3
    assert tf.train.load_variable(path, "global_step") == 3
    assert kept_steps(tmp_path) == [0, 3, 5]


async def test_background_at_most_one_write_in_flight(
    model: Model, tmp_path: Path, gated: GatedSaver
) -> None:
    hook = background_hook(tmp_path, gated, save_steps=1)
    gated.hold[0] = threading.Event()
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        finished = anyio.Event()

        async def step() -> None:
            await sess.run(model.inc)  # its save waits for step 0's write
            finished.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(step)
                await anyio.to_thread.run_sync(gated.entered(0).wait)
                await anyio.wait_all_tasks_blocked()
                assert not finished.is_set()
                assert len(gated.threads) == 1
                gated.hold[0].set()
    assert kept_steps(tmp_path) == [0, 1]


async def test_end_waits_for_the_write_in_flight(
    model: Model, tmp_path: Path, gated: GatedSaver
) -> None:
    gated.hold[2] = threading.Event()
    hooks = [Release(gated.hold[2]), background_hook(tmp_path, gated, save_steps=2)]
    with anyio.fail_after(30):
        async with asyncsess.SingularMonitoredSession(hooks=hooks) as sess:
            await sess.run(model.inc)
            await sess.run(model.inc)  # the write of step 2 waits at the gate
    assert kept_steps(tmp_path) == [0, 2]
    assert checkpoint_events(tmp_path) == [0, 2]


async def test_background_write_failure_raises_at_next_step(
    model: Model, tmp_path: Path, gated: GatedSaver
) -> None:
    hook = background_hook(tmp_path, gated, save_steps=1)
    gated.fail[2] = OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(model.inc)
            await sess.run(model.inc)  # the write of step 2 fails ...
            await sess.run(model.inc)  # ... and raises here
    assert kept_steps(tmp_path) == [0, 1]


async def test_background_write_with_the_scaffolds_sharded_saver(
    model: Model, tmp_path: Path
) -> None:
    hook = CheckpointSaverHook(str(tmp_path), save_steps=2, background_write=True)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(3):
            await sess.run(model.inc)
        assert hook._snapshot is not None  # fed from a snapshot, not synchronous
    assert kept_steps(tmp_path) == [0, 2, 3]
    assert latest_step(tmp_path) == 3


# -- background writes: the snapshot taken inside TensorFlow ------------------------


def checkpoint_keys(path: str) -> set[str]:
    return {name for name, _ in tf.train.list_variables(path)}


async def test_background_snapshot_is_taken_in_tensorflow(
    model: Model, tmp_path: Path, gated: GatedSaver
) -> None:
    hook = background_hook(tmp_path, gated, save_steps=1)
    report = v1.report_uninitialized_variables()  # what a Scaffold's ready_op runs
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        await sess.run(model.train_op, {model.x: 1.0})
        plan = hook._snapshot
        assert isinstance(plan, ShadowSnapshot)  # built in begin()
        shadows = {v.name for v in plan.shadows}
        # No collection a Saver, a Scaffold's init or ready op reads holds them.
        for key in (v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.LOCAL_VARIABLES):
            assert shadows.isdisjoint(v.name for v in model.graph.get_collection(key))
        assert shadows.isdisjoint(v.name for v in v1.global_variables())
        ready = await sess.run_without_hooks(report)
        assert list(ready) == []
        w = await sess.run_without_hooks(model.w)
    path = tf.train.latest_checkpoint(str(tmp_path))
    assert path.endswith("model.ckpt-1")
    assert checkpoint_keys(path) == {"global_step", "w"}
    with tf.Graph().as_default():
        step = v1.train.get_or_create_global_step()
        var = v1.get_variable("w", initializer=0.0)
        with v1.Session() as raw:
            v1.train.Saver().restore(raw, path)
            assert raw.run([step, var]) == [1, w]


async def test_background_meta_graph_has_the_original_saver(
    model: Model, tmp_path: Path, gated: GatedSaver
) -> None:
    hook = background_hook(tmp_path, gated, save_steps=1)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        await sess.run(model.inc)
    path = os.path.join(str(tmp_path), "model.ckpt-1")
    with tf.Graph().as_default():
        saver = v1.train.import_meta_graph(path + ".meta")
        assert saver.saver_def == gated.saver.saver_def
        with v1.Session() as raw:
            saver.restore(raw, path)
            assert raw.run(v1.train.get_global_step()) == 1


async def test_background_write_keeps_max_to_keep(model: Model, tmp_path: Path) -> None:
    saver = v1.train.Saver(max_to_keep=2)
    hook = CheckpointSaverHook(
        str(tmp_path), save_steps=1, saver=saver, background_write=True
    )
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(4):
            await sess.run(model.inc)
        assert isinstance(hook._snapshot, ShadowSnapshot)
    assert kept_steps(tmp_path) == [3, 4]
    assert saver.last_checkpoints == [
        os.path.join(str(tmp_path), f"model.ckpt-{s}") for s in (3, 4)
    ]
    indexes = sorted(glob.glob(str(tmp_path / "model.ckpt-*.index")))
    assert [os.path.basename(p) for p in indexes] == [
        "model.ckpt-3.index",
        "model.ckpt-4.index",
    ]
    assert checkpoint_events(tmp_path) == [0, 1, 2, 3, 4]


async def test_background_tf_write_error_keeps_its_type(
    model: Model, tmp_path: Path, gated: GatedSaver
) -> None:
    hook = background_hook(tmp_path, gated, save_steps=1)
    gated.fail[2] = tf.errors.ResourceExhaustedError(None, None, "quota")
    with pytest.raises(tf.errors.ResourceExhaustedError, match="quota"):
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(3):
                await sess.run(model.inc)
    assert kept_steps(tmp_path) == [0, 1]


async def test_background_snapshot_with_the_scaffolds_default_saver(
    model: Model, tmp_path: Path
) -> None:
    # The Scaffold's saver appears only at finalize: the shadows are built then.
    hook = CheckpointSaverHook(str(tmp_path), save_steps=2, background_write=True)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for _ in range(3):
            await sess.run(model.train_op, {model.x: 1.0})
        assert isinstance(hook._snapshot, ShadowSnapshot)
        assert model.graph.finalized
        assert not {v.name for v in hook._snapshot.shadows} & {
            v.name for v in v1.global_variables()
        }
        w = await sess.run_without_hooks(model.w)
    path = tf.train.latest_checkpoint(str(tmp_path))
    assert checkpoint_keys(path) == {"global_step", "w"}
    assert kept_steps(tmp_path) == [0, 2, 3]
    with tf.Graph().as_default():
        step = v1.train.get_or_create_global_step()
        var = v1.get_variable("w", initializer=0.0)
        with v1.Session() as raw:
            v1.train.Saver(sharded=True).restore(raw, path)
            assert raw.run([step, var]) == [3, w]


async def test_background_partitioned_variable_falls_back_to_feeding(
    tmp_path: Path,
) -> None:
    with tf.Graph().as_default():
        v1.train.get_or_create_global_step()
        inc = v1.assign_add(v1.train.get_global_step(), 1)
        v1.get_variable("p", shape=[4], partitioner=v1.fixed_size_partitioner(2))
        hook = CheckpointSaverHook(str(tmp_path), save_steps=1, background_write=True)
        async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
            await sess.run(inc)
            assert isinstance(hook._snapshot, list)
    assert kept_steps(tmp_path) == [0, 1]


async def test_stale_temp_folders_of_killed_writes_are_removed(
    model: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a write killed mid-way leaves (TF's Saver: <prefix>-N_temp/part-*).
    stale = tmp_path / "model.ckpt-40_temp"
    stale.mkdir()
    (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x" * 100)
    kept = [tmp_path / "model.ckpt-x_temp", tmp_path / "other.ckpt-3_temp"]
    for path in kept:
        path.mkdir()
    (tmp_path / "model.ckpt-7_temp").write_text("a file, not a write's folder")
    hook = CheckpointSaverHook(str(tmp_path), save_steps=2)
    with caplog.at_level(logging.INFO, logger="asyncsess.hooks"):
        async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
            await sess.run(model.train_op, {model.x: 1.0})
    assert not stale.exists()
    assert all(path.is_dir() for path in kept)
    assert (tmp_path / "model.ckpt-7_temp").is_file()
    assert "Removed 1 temporary checkpoint folder" in caplog.text
    assert latest_step(tmp_path) == 1
