"""Fault injection: hundreds of preemptions at random points of real TF training.

A creator wrapping real TF sessions raises AbortedError/UnavailableError at
session creation, in the device step, in a hook's own extra session run and in
``after_create_session``. Training still reaches its last step, the global step
never goes back past the last checkpoint, hooks see one ``after_create_session``
per session created, and nothing is left behind: threads, tasks, TF sessions.

The soak test (``@pytest.mark.soak``, run with ``ASYNCSESS_SOAK=1``) trains
20,000 steps with hooks of random latency and randomly cancelled callers, and
checks that RSS and the thread count stay flat.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import sniffio
import tensorflow as tf

import asyncsess

from ._reliability import Faults, FaultyCreator, SessionCensus, hook_run, tf_sessions
from .conftest import Model

if TYPE_CHECKING:
    from pathlib import Path

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio

__all__ = ["tf_sessions"]

#: Injected faults at least, per backend, in test_hundreds_of_faults.
MIN_FAULTS = 500


def live_tasks() -> int:
    """Tasks alive on the running loop (asyncio or trio)."""
    if sniffio.current_async_library() == "trio":
        import trio

        return int(trio.lowlevel.current_statistics().tasks_living)
    import asyncio

    return len(asyncio.all_tasks())


#: Idle threads the event loops keep for reuse (anyio's and trio's thread pools).
_POOL_THREADS = ("AnyIO worker thread", "Trio thread ")


def settled_thread_count() -> int:
    """Threads alive, not counting loop thread pools, once asyncsess's have exited."""
    for t in threading.enumerate():
        if t.name.startswith(("asyncsess-", "QueueRunnerThread")):
            t.join(timeout=5)
    return sum(not t.name.startswith(_POOL_THREADS) for t in threading.enumerate())


class Counting(asyncsess.SessionRunHook):
    def __init__(self) -> None:
        self.begins = 0
        self.sessions: list[Any] = []

    async def begin(self) -> None:
        self.begins += 1

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self.sessions.append(session)


class Preempting(asyncsess.SessionRunHook):
    """Preempted in after_create_session when the plan says so."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self.faults.check("after_create_session")


class SaveEvery(v1.train.SessionRunHook):
    """Saves a checkpoint every *n* steps with the scaffold's Saver.

    Leaner than CheckpointSaverHook, which also writes the graph and a checkpoint
    after every session creation (so after every recovery).
    """

    def __init__(self, scaffold: Any, directory: str, n: int, step: Any) -> None:
        self.scaffold, self.prefix, self.n, self.step = scaffold, directory, n, step

    def before_run(self, run_context: Any) -> Any:
        return v1.train.SessionRunArgs(self.step)

    def after_run(self, run_context: Any, run_values: Any) -> None:
        step = run_values.results
        if step % self.n == 0:
            with hook_run():  # a hook's own session runs: preempted at times
                self.scaffold.saver.save(
                    run_context.session, self.prefix, global_step=step
                )


class ExtraRun(v1.train.SessionRunHook):
    """A TF hook with its own session run each step (as TF's standard hooks do)."""

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def after_run(self, run_context: Any, run_values: Any) -> None:
        with hook_run():
            run_context.session.run(self.tensor)


async def test_hundreds_of_faults(
    model: Model,
    tmp_path: Path,
    tf_sessions: SessionCensus,
    no_thread_leaks: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    threads_before, tasks_before = settled_thread_count(), live_tasks()
    last_step = 1000
    faults = Faults(
        {"create": 0.75, "step": 0.04, "hook_run": 0.02, "after_create_session": 0.4},
        seed=6,
        step_marker=model.train_op,
    )
    scaffold = v1.train.Scaffold()
    inner = asyncsess.ChiefSessionCreator(scaffold, checkpoint_dir=str(tmp_path))
    creator = FaultyCreator(faults, inner)
    counting = Counting()
    hooks = [
        counting,
        Preempting(faults),
        ExtraRun(model.global_step),
        SaveEvery(scaffold, str(tmp_path / "model.ckpt"), 5, model.global_step),
        asyncsess.hooks.StopAtStepHook(last_step=last_step),
    ]
    sess = asyncsess.MonitoredSession(creator, hooks)
    sess.recovery = asyncsess.RecoveryPolicy(max_recoveries=None, initial_backoff=0)
    last_saved = steps_run = 0
    with anyio.fail_after(120):
        async with sess:
            while not sess.should_stop():
                _, step = await sess.run([model.train_op, model.global_step])
                assert step >= last_saved  # never back past the last checkpoint
                latest = v1.train.latest_checkpoint(str(tmp_path))
                if latest is not None:
                    last_saved = max(last_saved, int(latest.rsplit("-", 1)[1]))
                steps_run += 1
            final_step = await sess.run_without_hooks(model.global_step)
    # Training reached its last step.
    assert final_step == last_step
    assert 0 < last_saved <= last_step
    assert faults.total >= MIN_FAULTS
    assert sess.recovery_count == faults.total
    # One begin; one after_create_session per session created, with that session.
    assert counting.begins == 1
    assert counting.sessions == creator.created
    # Nothing left behind.
    assert tf_sessions.open_sessions() == []
    assert settled_thread_count() == threads_before
    assert live_tasks() == tasks_before
    with capsys.disabled():
        print(  # noqa: T201
            f"\nfaults injected and survived ({sniffio.current_async_library()}): "
            f"{faults.total} {dict(faults.injected)}; sessions created: "
            f"{len(creator.created)}; steps run: {steps_run}"
        )


# -- soak -----------------------------------------------------------------------------


def rss_kib() -> int:
    """Resident set size of this process, in KiB (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")  # pragma: no cover


class Jittery(asyncsess.SessionRunHook):
    """An async hook whose before_run and after_run take a random while."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    async def before_run(self, run_context: Any) -> None:
        if self.rng.random() < 0.1:
            await anyio.sleep(self.rng.random() * 0.001)

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        if self.rng.random() < 0.1:
            await anyio.sleep(self.rng.random() * 0.001)
        else:
            await anyio.lowlevel.checkpoint()


@pytest.mark.soak
@pytest.mark.skipif(
    os.environ.get("ASYNCSESS_SOAK") != "1",
    reason="soak test: set ASYNCSESS_SOAK=1 to run it",
)
async def test_soak(model: Model, capsys: pytest.CaptureFixture[str]) -> None:
    steps, rng = 20_000, random.Random(20_000)
    hooks = [Jittery(rng), Jittery(rng), v1.train.StepCounterHook(every_n_steps=10**9)]
    cancelled = 0
    samples: list[tuple[int, int, int]] = []
    async with asyncsess.MonitoredSession(hooks=hooks) as sess:
        sess.step_cancel_grace = 60  # the steps are short: cancelled ones finish
        done = 0
        while done < steps:
            if rng.random() < 0.05:  # a caller that gives up at a random point
                with anyio.move_on_after(rng.random() * 0.002):
                    await sess.run(model.train_op)
                cancelled += 1
            else:
                await sess.run(model.train_op)
            done += 1
            if done in (1_000, steps):  # warmed up / the end
                gc.collect()
                samples.append((done, rss_kib(), threading.active_count()))
    (_, rss_start, threads_start), (_, rss_end, threads_end) = samples
    with capsys.disabled():
        print(  # noqa: T201
            f"\nsoak ({sniffio.current_async_library()}, {sys.platform}): {steps} "
            f"steps, {cancelled} callers cancelled; RSS {rss_start} KiB at step "
            f"1000 -> {rss_end} KiB at the end; threads {threads_start} -> "
            f"{threads_end}"
        )
    assert threads_end <= threads_start
    assert rss_end - rss_start < 50 * 1024  # flat: under 50 MiB of growth


# -- hooks that raise -----------------------------------------------------------------


class Raising(asyncsess.SessionRunHook):
    """Raises KeyError from one phase, after letting the loop run once."""

    def __init__(self, phase: str) -> None:
        self.phase = phase

    async def _maybe_raise(self, phase: str) -> None:
        if phase == self.phase:
            await anyio.lowlevel.checkpoint()
            raise KeyError(f"{phase} failed")

    async def begin(self) -> None:
        await self._maybe_raise("begin")

    async def after_create_session(self, session: Any, coord: Any) -> None:
        await self._maybe_raise("after_create_session")

    async def before_run(self, run_context: Any) -> None:
        await self._maybe_raise("before_run")

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        await self._maybe_raise("after_run")

    async def end(self, session: Any) -> None:
        await self._maybe_raise("end")


class Slow(asyncsess.SessionRunHook):
    """A hook of the same phase that would never finish unless cancelled."""

    def __init__(self, phase: str) -> None:
        self.phase, self.cancelled = phase, False

    async def _wait(self, phase: str) -> None:
        if phase == self.phase:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.cancelled = True
                raise

    async def before_run(self, run_context: Any) -> None:
        await self._wait("before_run")

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        await self._wait("after_run")


@pytest.mark.parametrize(
    "phase", ["begin", "after_create_session", "before_run", "after_run", "end"]
)
async def test_hook_error_keeps_its_type_and_closes_everything(
    model: Model, phase: str, tf_sessions: SessionCensus, no_thread_leaks: None
) -> None:
    slow = Slow(phase)
    sess = asyncsess.MonitoredSession(hooks=[slow, Raising(phase)])
    with anyio.fail_after(20), pytest.raises(KeyError, match=f"{phase} failed"):
        async with sess:
            await sess.run(model.inc)
    if phase in ("before_run", "after_run"):  # the concurrent phases
        assert slow.cancelled
    assert sess.should_stop()
    assert tf_sessions.open_sessions() == []
    assert not model.graph.finalized
