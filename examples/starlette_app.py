"""Train and serve a TensorFlow graph from your own Starlette (or FastAPI) app.

Three public pieces do it: a session opened in the app's lifespan, a training
loop in a task of that lifespan, and an `asyncsess.Batcher` over the same
session, so concurrent ``POST /predict`` calls share device steps, which take
turns with the training steps. Shutting the app down stops training after the
current step and writes the final checkpoint.

Run it with ``python examples/starlette_app.py [--port 8000] [--logdir DIR]``, or
``uvicorn starlette_app:app`` from this folder, then::

    curl -s -X POST localhost:8000/predict -d '{"x": [[1, 2, 3, 4]]}'

With FastAPI: ``app = FastAPI(lifespan=lifespan)`` and the same ``predict`` body
under ``@app.post("/predict")``.
"""

from __future__ import annotations

import argparse
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import anyio
import numpy as np
import tensorflow as tf
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import asyncsess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

v1 = tf.compat.v1


@dataclass(frozen=True)
class Model:
    graph: tf.Graph
    train_op: Any
    x: Any  # the served input: rows of 4 features
    y: Any  # the served output: one number per row


def build_model() -> Model:
    """A linear regression on data made in the graph, served through ``x``."""
    graph = tf.Graph()
    with graph.as_default():
        global_step = v1.train.get_or_create_global_step()
        w = v1.get_variable("w", [4, 1], initializer=v1.zeros_initializer())
        x_train = tf.random.normal([32, 4])
        y_train = x_train @ tf.constant([[1.0], [2.0], [3.0], [4.0]])
        loss = tf.reduce_mean(tf.square(x_train @ w - y_train))
        train_op = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=global_step)
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        y = tf.squeeze(x @ w, axis=1, name="y")
    return Model(graph, train_op, x, y)


async def train(sess: asyncsess.MonitoredSession, model: Model) -> None:
    """Train until a stop is requested (by shutdown or a hook)."""
    while not sess.should_stop():
        try:
            await sess.run(model.train_op)
        except asyncsess.RunAfterStopError:  # the stop came while we waited
            break


def create_app(logdir: str) -> Starlette:
    """The app: POST /predict, answered while the model trains."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        model = build_model()
        with model.graph.as_default():  # the session's graph
            session = asyncsess.MonitoredTrainingSession(checkpoint_dir=logdir)
        async with (
            session as sess,
            asyncsess.Batcher(sess, max_batch_size=64) as batcher,
            anyio.create_task_group() as tasks,
        ):
            app.state.model, app.state.batcher = model, batcher
            tasks.start_soon(train, sess, model)
            yield
            sess.request_stop()  # the loop ends after its step; then the
            # Batcher finishes its batch and the session writes a checkpoint

    async def predict(request: Request) -> JSONResponse:
        model, batcher = request.app.state.model, request.app.state.batcher
        try:
            x = np.asarray((await request.json())["x"], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"detail": f"bad request: {exc}"}, 422)
        if x.ndim != 2 or x.shape[1] != 4:
            return JSONResponse({"detail": "x must be rows of 4 numbers"}, 422)
        y = await batcher.run(model.y, {model.x: x})
        return JSONResponse({"y": y.tolist()})

    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"])], lifespan=lifespan
    )


app = create_app(os.environ.get("LOGDIR", "runs/starlette_app"))


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--logdir", default="runs/starlette_app")
    args = parser.parse_args()
    uvicorn.run(create_app(args.logdir), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
