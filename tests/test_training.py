"""MonitoredTrainingSession: TF's defaults and hook order, and output parity with TF."""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import tensorflow as tf

import asyncsess
from asyncsess import hooks as ah
from asyncsess._tf import global_step_read

if TYPE_CHECKING:
    from pathlib import Path

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


class Net:
    """A deterministic training graph with a summary, built in the default graph."""

    def __init__(self) -> None:
        self.step = v1.train.get_or_create_global_step()
        self.w = v1.get_variable("w", initializer=[1.0, -2.0])
        self.loss = tf.reduce_sum(tf.square(self.w - [3.0, 0.5]))
        v1.summary.scalar("loss", self.loss)
        opt = v1.train.GradientDescentOptimizer(0.05)
        # As tf.estimator does: the step the hooks fetch is read before the train
        # op increments it. Without this the read races with the increment, and
        # TF's SummarySaverHook (ours too, by design) stamps steps by that read.
        with tf.control_dependencies([global_step_read()]):
            self.train_op = opt.minimize(self.loss, global_step=self.step)


@pytest.fixture
def net() -> Any:
    with tf.Graph().as_default():
        yield Net()


def hook_types(sess: Any) -> list[type]:
    return [type(h) for h in sess._hooks]


class TestDefaults:
    def test_chief_hooks_in_tf_order(self, net: Net, tmp_path: Path) -> None:
        first, last = ah.StopAtStepHook(last_step=1), ah.StopAtStepHook(last_step=2)
        sess = asyncsess.MonitoredTrainingSession(
            checkpoint_dir=str(tmp_path), hooks=[last], chief_only_hooks=[first]
        )
        assert isinstance(sess, asyncsess.MonitoredSession)
        assert sess._hooks[0] is first
        assert sess._hooks[-1] is last
        counter, summaries, saver = sess._hooks[1:4]
        assert isinstance(counter, ah.StepCounterHook)
        assert counter._timer._every_steps == 100
        assert isinstance(summaries, ah.SummarySaverHook)
        assert summaries._timer._every_steps == 100
        assert isinstance(saver, ah.CheckpointSaverHook)
        assert saver._timer._every_secs == 600
        assert isinstance(sess._creator, asyncsess.ChiefSessionCreator)

    def test_non_chief_gets_only_hooks(self, net: Net, tmp_path: Path) -> None:
        hook = ah.StopAtStepHook(last_step=1)
        sess = asyncsess.MonitoredTrainingSession(
            is_chief=False,
            checkpoint_dir=str(tmp_path),
            hooks=[hook],
            chief_only_hooks=[ah.StopAtStepHook(last_step=2)],
            max_wait_secs=5,
        )
        assert sess._hooks == [hook]
        assert isinstance(sess._creator, asyncsess.WorkerSessionCreator)

    def test_no_dirs_no_default_hooks(self, net: Net) -> None:
        assert asyncsess.MonitoredTrainingSession()._hooks == []

    def test_turning_hooks_off(self, net: Net, tmp_path: Path) -> None:
        sess = asyncsess.MonitoredTrainingSession(
            checkpoint_dir=str(tmp_path),
            save_checkpoint_secs=0,
            save_summaries_steps=0,
            log_step_count_steps=None,
        )
        assert sess._hooks == []

    def test_summary_dir_without_checkpoint_dir(self, net: Net, tmp_path: Path) -> None:
        sess = asyncsess.MonitoredTrainingSession(
            summary_dir=str(tmp_path), save_summaries_secs=30
        )
        assert hook_types(sess) == [ah.StepCounterHook, ah.SummarySaverHook]
        assert sess._hooks[1]._timer._every_secs == 30
        assert sess._hooks[1]._timer._every_steps is None

    def test_checkpoint_steps(self, net: Net, tmp_path: Path) -> None:
        sess = asyncsess.MonitoredTrainingSession(
            checkpoint_dir=str(tmp_path), save_checkpoint_steps=7
        )
        saver = sess._hooks[-1]
        assert (saver._timer._every_steps, saver._timer._every_secs) == (7, None)

    def test_both_checkpoint_secs_and_steps(self, net: Net, tmp_path: Path) -> None:
        with pytest.raises(
            ValueError,
            match=(
                r"save_checkpoint_secs and save_checkpoint_steps.*"
                r"Received: save_checkpoint_secs=60, save_checkpoint_steps=10"
            ),
        ):
            asyncsess.MonitoredTrainingSession(
                checkpoint_dir=str(tmp_path),
                save_checkpoint_secs=60,
                save_checkpoint_steps=10,
            )

    def test_both_summaries_secs_and_steps(self, net: Net) -> None:
        with pytest.raises(
            ValueError, match="Received: save_summaries_secs=5, save_summaries_steps=5"
        ):
            asyncsess.MonitoredTrainingSession(
                save_summaries_secs=5, save_summaries_steps=5
            )

    def test_use_default_sentinel(self) -> None:
        assert repr(asyncsess.USE_DEFAULT) == "USE_DEFAULT"
        assert asyncsess.MonitoredTrainingSession.__module__ == "asyncsess"


def meta_files(directory: Path) -> list[str]:
    return glob.glob(os.path.join(str(directory), "*.meta"))


@pytest.mark.parametrize("save_graph_def", [True, False])
async def test_save_graph_def(net: Net, tmp_path: Path, save_graph_def: bool) -> None:
    async with asyncsess.MonitoredTrainingSession(
        checkpoint_dir=str(tmp_path),
        save_checkpoint_steps=1,
        save_graph_def=save_graph_def,
    ) as sess:
        assert len(meta_files(tmp_path)) == (1 if save_graph_def else 0)
        await sess.run(net.train_op)
        assert len(meta_files(tmp_path)) == (2 if save_graph_def else 0)
    pbtxt = os.path.join(str(tmp_path), "graph.pbtxt")
    assert os.path.exists(pbtxt) == save_graph_def  # noqa: ASYNC240


async def test_saving_and_restoring(tmp_path: Path) -> None:
    for expected_start in (0, 3):
        with tf.Graph().as_default():
            net = Net()
            async with asyncsess.MonitoredTrainingSession(
                checkpoint_dir=str(tmp_path)
            ) as sess:
                assert await sess.run(net.step) == expected_start
                for _ in range(3):
                    await sess.run(net.train_op)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-6")


# -- parity with TensorFlow ---------------------------------------------------------

N_STEPS = 12
PARITY = {
    "save_checkpoint_steps": 5,
    "save_summaries_steps": 3,
    "log_step_count_steps": 4,
}


def event_pairs(directory: str) -> list[tuple[str, int]]:
    """(tag or session-log status, step) of every event, in file order."""
    pairs = []
    for path in sorted(glob.glob(os.path.join(directory, "events.out.*"))):
        for event in v1.train.summary_iterator(path):
            pairs.extend((value.tag, event.step) for value in event.summary.value)
            if event.HasField("session_log"):
                pairs.append((f"session_log:{event.session_log.status}", event.step))
    return pairs


def outputs(directory: str) -> dict[str, Any]:
    state = tf.train.get_checkpoint_state(directory)
    return {
        "kept": [os.path.basename(p) for p in state.all_model_checkpoint_paths],
        "latest": os.path.basename(state.model_checkpoint_path),
        "events": sorted(event_pairs(directory)),
        "files": sorted(
            os.path.basename(p)
            for p in glob.glob(os.path.join(directory, "*"))
            if "events.out" not in p
        ),
    }


def train_with_tensorflow(directory: str) -> Any:
    with tf.Graph().as_default():
        net = Net()
        with v1.train.MonitoredTrainingSession(checkpoint_dir=directory, **PARITY) as s:
            for _ in range(N_STEPS):
                s.run(net.train_op)
            return s.run(net.w)


async def train_with_asyncsess(directory: str) -> Any:
    with tf.Graph().as_default():
        net = Net()
        async with asyncsess.MonitoredTrainingSession(
            checkpoint_dir=directory, **PARITY
        ) as sess:
            for _ in range(N_STEPS):
                await sess.run(net.train_op)
            return await sess.run(net.w)


async def test_parity_with_tensorflow(tmp_path: Path) -> None:
    tf_dir, our_dir = str(tmp_path / "tf"), str(tmp_path / "asyncsess")
    with anyio.fail_after(60):
        tf_w = await anyio.to_thread.run_sync(train_with_tensorflow, tf_dir)
        our_w = await train_with_asyncsess(our_dir)
    assert our_w.tolist() == tf_w.tolist()
    ours, theirs = outputs(our_dir), outputs(tf_dir)
    assert ours["kept"] == theirs["kept"] == [f"model.ckpt-{n}" for n in (0, 5, 10, 12)]
    assert ours["latest"] == theirs["latest"]
    assert ours["files"] == theirs["files"]
    assert ours["events"] == theirs["events"]
    tags = {tag for tag, _ in ours["events"]}
    assert {"loss", "global_step/sec"} <= tags
    for name in ("w", "global_step"):
        ours_value = tf.train.load_variable(
            os.path.join(our_dir, "model.ckpt-10"), name
        )
        theirs_value = tf.train.load_variable(
            os.path.join(tf_dir, "model.ckpt-10"), name
        )
        assert ours_value.tolist() == theirs_value.tolist()


async def test_tf_and_async_hooks_side_by_side(net: Net, tmp_path: Path) -> None:
    tf_dir = str(tmp_path / "tf")
    hooks = [
        v1.train.StopAtStepHook(last_step=6),
        # Its own saver: a Saver keeps one list of checkpoints to rotate.
        v1.train.CheckpointSaverHook(tf_dir, save_steps=2, saver=v1.train.Saver()),
        ah.SummarySaverHook(
            save_steps=2, output_dir=tf_dir, summary_op=v1.summary.merge_all()
        ),
        v1.train.StepCounterHook(every_n_steps=2, output_dir=tf_dir),
    ]
    async with asyncsess.MonitoredTrainingSession(
        checkpoint_dir=str(tmp_path / "ours"), hooks=hooks
    ) as sess:
        while not sess.should_stop():
            await sess.run(net.train_op)
    state = tf.train.get_checkpoint_state(tf_dir)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        f"model.ckpt-{n}" for n in (0, 2, 4, 6)
    ]
    assert tf.train.latest_checkpoint(str(tmp_path / "ours")).endswith("model.ckpt-6")
    steps = sorted(step for tag, step in event_pairs(tf_dir) if tag == "loss")
    assert steps == [1, 3, 5]
