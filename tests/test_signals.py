"""stop_on_signals: SIGINT/SIGTERM become request_stop(); the demo exits 0 on them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import tensorflow as tf

import asyncsess

from .conftest import Model

ROOT = Path(__file__).resolve().parent.parent
v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


class Target:
    """Anything with request_stop(): records the calls, wakes a waiting test."""

    def __init__(self, session: Any = None) -> None:
        self.calls = 0
        self.stopped = anyio.Event()
        self.session = session

    def request_stop(self) -> None:
        self.calls += 1
        if self.session is not None:
            self.session.request_stop()
        self.stopped.set()


class TestStopOnSignals:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    async def test_a_signal_requests_a_stop(self, signum: signal.Signals) -> None:
        target = Target()
        async with asyncsess.stop_on_signals(target) as stop:
            os.kill(os.getpid(), signum)
            with anyio.fail_after(10):
                await target.stopped.wait()
        assert stop.received is signum
        assert target.calls == 1

    async def test_no_signal(self) -> None:
        before = signal.getsignal(signal.SIGTERM)
        target = Target()
        async with asyncsess.stop_on_signals(target, [signal.SIGTERM]) as stop:
            await anyio.lowlevel.checkpoint()
        assert stop.received is None
        assert target.calls == 0
        assert repr(stop) == "SignalStop(received=None)"
        if before is signal.SIG_DFL:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    async def test_errors_keep_their_type(self) -> None:
        with pytest.raises(ValueError, match="boom"):
            async with asyncsess.stop_on_signals(Target()):
                raise ValueError("boom")

    async def test_cancelling_the_block(self) -> None:
        target = Target()
        with anyio.move_on_after(0.01) as scope:
            async with asyncsess.stop_on_signals(target):
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert target.calls == 0

    async def test_a_session_ends_cleanly_with_its_final_checkpoint(
        self, model: Model, tmp_path: Path
    ) -> None:
        saver = v1.train.CheckpointSaverHook(str(tmp_path), save_steps=1000)
        session = asyncsess.MonitoredSession(
            asyncsess.ChiefSessionCreator(checkpoint_dir=str(tmp_path)), [saver]
        )
        target = Target(session)
        steps = 0
        async with asyncsess.stop_on_signals(target) as stop, session as sess:
            while not sess.should_stop():
                await sess.run(model.train_op)
                steps += 1
                if steps == 3:
                    os.kill(os.getpid(), signal.SIGTERM)
                    with anyio.fail_after(10):
                        await target.stopped.wait()
        assert stop.received is signal.SIGTERM
        assert steps == 3
        assert session.stop_reason is not None
        assert session.stop_reason.kind == "user"
        assert v1.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-3")


def start_demo(logdir: Path, stderr: Any, *args: str) -> subprocess.Popen[str]:
    argv = ["-m", "asyncsess", "demo", "--steps", "1000000", "--logdir", str(logdir)]
    return subprocess.Popen(
        [sys.executable, *argv, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_demo_stops_gracefully_with_a_final_checkpoint(
    signum: signal.Signals, tmp_path: Path
) -> None:
    logdir = tmp_path / "run"
    with (tmp_path / "stderr.txt").open("w+") as err:
        proc = start_demo(logdir, err)
        try:
            assert proc.stdout is not None
            started = proc.stdout.readline()  # handlers are installed by now
            assert started.startswith("Started"), started
            proc.send_signal(signum)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read()
    assert proc.returncode == 0, stderr
    assert f"Received {signum.name}: stopping after the current step" in stderr
    line = next(x for x in out.splitlines() if x.startswith("Stopped by"))
    step = int(line.split("global step ")[1].split(".")[0])
    assert line.startswith(f"Stopped by {signum.name} at global step {step}.")
    assert 0 <= step < 1000000
    assert v1.train.latest_checkpoint(str(logdir)).endswith(f"model.ckpt-{step}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_the_demo_at_once(
    signum: signal.Signals, tmp_path: Path
) -> None:
    # A 3 s async hook keeps the demo inside its last step after the first signal
    # (the stop waits for it), so the second signal finds it still stopping.
    proc = start_demo(tmp_path, subprocess.PIPE, "--hooks-latency-ms", "3000")
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline().startswith("Started")
        proc.send_signal(signum)
        for line in proc.stderr:
            if f"Received {signum.name}: stopping after the current step" in line:
                break
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signum, err
    assert f"Received {signum.name} again: stopping at once." in err
    assert "Stopped by" not in out
