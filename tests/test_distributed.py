"""Training on TensorFlow's gRPC runtime: one parameter server, two workers.

Each task's `tf.compat.v1.train.Server` runs in its own subprocess
(examples/distributed.py --server-only) on free ports of 127.0.0.1. The two
workers' asyncsess sessions run here, in one event loop, over two graphs: the
chief through ``MonitoredTrainingSession(is_chief=True)`` (ChiefSessionCreator,
checkpoints), the other through ``is_chief=False`` (WorkerSessionCreator, which
waits for the chief without blocking the loop). The preemption test kills the
parameter server mid-training and restarts it on the same port.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import tensorflow as tf

import asyncsess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

v1 = tf.compat.v1
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distributed.py"
#: Bound on every wait for a TF server or for training; a hang fails the test.
BOUND = 90


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("distributed_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """The TF servers of one ps and two workers, each in a subprocess."""

    def __init__(self) -> None:
        self.ps_hosts = f"127.0.0.1:{free_port()}"
        self.worker_hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
        self.spec = example.cluster_spec(self.ps_hosts, self.worker_hosts)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def master(self, task: int) -> str:
        return f"grpc://{self.worker_hosts.split(',')[task]}"

    def start(self, job: str, task: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(EXAMPLE), "--job", job, "--task", str(task)]
        command += ["--ps-hosts", self.ps_hosts, "--worker-hosts", self.worker_hosts]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.Popen(
            [*command, "--server-only"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.procs[f"{job}:{task}"] = proc
        return proc

    @staticmethod
    def wait_serving(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                line = proc.stdout.readline()
                if b"serving at" in line:
                    return
                if not line:
                    break
        raise RuntimeError(f"TF server {proc.args!r} did not start")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=BOUND)
        if proc.stdout is not None:
            proc.stdout.close()

    def restart_ps(self) -> None:
        """Kill the parameter server and start it again on the same port."""
        self.kill("ps:0")
        self.wait_serving(self.start("ps", 0))

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        procs = [
            cluster.start("ps", 0),
            cluster.start("worker", 0),
            cluster.start("worker", 1),
        ]
        for proc in procs:
            cluster.wait_serving(proc)
    except (OSError, RuntimeError) as exc:  # pragma: no cover - depends on host
        cluster.close()
        pytest.skip(f"TensorFlow gRPC servers cannot start here: {exc}")
    yield cluster
    cluster.close()


class AtStep(asyncsess.SessionRunHook):
    """Sets an event once the global step this worker sees reaches *step*."""

    def __init__(self, step: int) -> None:
        self.step, self.reached = step, anyio.Event()

    async def before_run(self, run_context: Any) -> Any:
        return v1.train.SessionRunArgs(v1.train.get_global_step())

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        if run_values.results >= self.step:
            self.reached.set()


class Trainer:
    """One worker's session over its own graph, run as a task of the test loop."""

    def __init__(
        self, cluster: Cluster, task: int, last_step: int, logdir: Path | None
    ) -> None:
        self.model = example.Model(cluster.spec, task)
        self.task = task
        self.at = AtStep(last_step // 3)
        with self.model.graph.as_default():
            self.session = asyncsess.MonitoredTrainingSession(
                master=cluster.master(task),
                is_chief=task == 0,
                checkpoint_dir=str(logdir) if logdir else None,
                hooks=[asyncsess.hooks.StopAtStepHook(last_step=last_step), self.at],
                save_checkpoint_steps=20 if task == 0 else None,
                save_summaries_steps=None,
                save_summaries_secs=None,
                log_step_count_steps=None,
                config=example.session_config(task),
                max_wait_secs=BOUND,
            )
        self.session.recovery = asyncsess.RecoveryPolicy(max_backoff=1)
        self.final_step: int | None = None
        self.steps = 0

    async def run(self) -> None:
        sess = self.session
        async with sess:
            while not sess.should_stop():
                await sess.run(self.model.train_op)
                self.steps += 1
            self.final_step = int(await sess.run_without_hooks(self.model.global_step))


async def test_two_workers_train_to_a_shared_last_step(
    cluster: Cluster, tmp_path: Path
) -> None:
    last_step = 200
    chief = Trainer(cluster, 0, last_step, tmp_path)
    worker = Trainer(cluster, 1, last_step, None)
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            # The non-chief starts first: it waits for the chief's initialization
            # while the loop goes on (the chief's session opens meanwhile).
            tg.start_soon(worker.run)
            tg.start_soon(chief.run)
    # Both stop at the shared last step (one may pass it by the steps in flight).
    assert chief.final_step is not None
    assert worker.final_step is not None
    assert last_step <= chief.final_step <= last_step + 2
    assert last_step <= worker.final_step <= last_step + 2
    assert chief.steps > 0
    assert worker.steps > 0  # both trained
    assert chief.steps + worker.steps >= last_step
    assert v1.train.latest_checkpoint(str(tmp_path)) is not None


async def test_parameter_server_preemption(cluster: Cluster, tmp_path: Path) -> None:
    last_step = 300
    chief = Trainer(cluster, 0, last_step, tmp_path)
    worker = Trainer(cluster, 1, last_step, None)
    with anyio.fail_after(BOUND * 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(chief.run)
            tg.start_soon(worker.run)
            await chief.at.reached.wait()
            saved_before = v1.train.latest_checkpoint(str(tmp_path))
            assert saved_before is not None
            # Preempt the parameter server: every variable is lost with it.
            await anyio.to_thread.run_sync(cluster.restart_ps)
    assert chief.session.recovery_count >= 1
    assert worker.session.recovery_count >= 1
    creator = chief.session._creator
    assert creator.restored_checkpoint is not None
    restored_at = int(creator.restored_checkpoint.rsplit("-", 1)[1])
    assert restored_at >= int(saved_before.rsplit("-", 1)[1])
    assert chief.final_step is not None
    assert last_step <= chief.final_step <= last_step + 2
    latest = v1.train.latest_checkpoint(str(tmp_path))
    assert latest is not None
    assert int(latest.rsplit("-", 1)[1]) >= last_step
    print(  # noqa: T201
        f"\npreemption: chief recovered {chief.session.recovery_count}x, worker "
        f"{worker.session.recovery_count}x; chief restored at step {restored_at}; "
        f"final step {chief.final_step}; final checkpoint {Path(latest).name}"
    )
