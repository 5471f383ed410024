"""Train across processes (or machines) on TensorFlow's gRPC runtime with asyncsess.

One parameter server and two workers, started by hand, one command per task
(three terminals; replace 127.0.0.1 by the machines' addresses)::

    python examples/distributed.py --job ps --task 0
    python examples/distributed.py --job worker --task 0 --logdir /tmp/dist
    python examples/distributed.py --job worker --task 1

Every task runs a `tf.compat.v1.train.Server` of the cluster. Each worker builds
the same graph, its variables placed on the parameter server by
`tf.compat.v1.train.replica_device_setter`, and trains from async code with
`asyncsess.MonitoredTrainingSession`: worker 0 is the chief (it initializes or
restores the model and writes checkpoints), worker 1 waits for it without
blocking its event loop. Both stop at the shared ``--last-step``. A preempted
parameter server (killed and restarted on the same port) is survived: the
workers recreate their sessions and the chief restores its last checkpoint.

``--server-only`` starts the task's server and nothing else (the tests run the
workers' sessions themselves).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import anyio
import tensorflow as tf

v1 = tf.compat.v1

DEFAULT_PS = "127.0.0.1:2222"
DEFAULT_WORKERS = "127.0.0.1:2223,127.0.0.1:2224"


def cluster_spec(ps_hosts: str, worker_hosts: str) -> Any:
    """The ClusterSpec of one ``ps`` job and one ``worker`` job."""
    return v1.train.ClusterSpec(
        {"ps": ps_hosts.split(","), "worker": worker_hosts.split(",")}
    )


def session_config(task: int) -> Any:
    """A worker talks only to the parameter servers and itself.

    Without device filters, creating a session waits for every task of the
    cluster, so one slow or restarting worker would stall the others.
    """
    return v1.ConfigProto(device_filters=["/job:ps", f"/job:worker/task:{task}"])


class Model:
    """A linear regression whose variables live on the parameter server."""

    def __init__(self, cluster: Any, task: int) -> None:
        self.graph = tf.Graph()
        with (
            self.graph.as_default(),
            v1.device(
                v1.train.replica_device_setter(
                    cluster=cluster, worker_device=f"/job:worker/task:{task}"
                )
            ),
        ):
            self.global_step = v1.train.get_or_create_global_step()
            x = v1.random_normal([32, 1], seed=task)
            y = 3.0 * x + 1.0
            w = v1.get_variable("w", initializer=[[0.0]])
            b = v1.get_variable("b", initializer=[0.0])
            self.loss = tf.reduce_mean(tf.square(tf.matmul(x, w) + b - y))
            self.train_op = v1.train.GradientDescentOptimizer(0.05).minimize(
                self.loss, global_step=self.global_step
            )


async def train(
    model: Model,
    master: str,
    task: int,
    *,
    last_step: int,
    logdir: str | None,
    save_checkpoint_steps: int = 50,
) -> int:
    """Train until the shared global step reaches *last_step*; return it."""
    import asyncsess

    with model.graph.as_default():
        sess = asyncsess.MonitoredTrainingSession(
            master=master,
            is_chief=task == 0,
            checkpoint_dir=logdir if task == 0 else None,
            hooks=[asyncsess.hooks.StopAtStepHook(last_step=last_step)],
            save_checkpoint_steps=save_checkpoint_steps if task == 0 else None,
            save_summaries_steps=None,
            save_summaries_secs=None,
            log_step_count_steps=None,
            config=session_config(task),
            max_wait_secs=120,
        )
    async with sess:
        while not sess.should_stop():
            await sess.run(model.train_op)
        return int(await sess.run_without_hooks(model.global_step))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=["ps", "worker"], required=True)
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--ps-hosts", default=DEFAULT_PS)
    parser.add_argument("--worker-hosts", default=DEFAULT_WORKERS)
    parser.add_argument("--last-step", type=int, default=1000)
    parser.add_argument("--logdir", default=None, help="the chief's checkpoints")
    parser.add_argument("--server-only", action="store_true")
    args = parser.parse_args(argv)

    cluster = cluster_spec(args.ps_hosts, args.worker_hosts)
    server = v1.train.Server(cluster, job_name=args.job, task_index=args.task)
    print(f"{args.job}:{args.task} serving at {server.target}", flush=True)
    if args.job == "ps" or args.server_only:
        server.join()  # until the process is killed
        return 0
    model = Model(cluster, args.task)
    step = anyio.run(
        lambda: train(
            model,
            server.target,
            args.task,
            last_step=args.last_step,
            logdir=args.logdir,
        )
    )
    print(f"worker:{args.task} done at global step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
