"""``serve MODULE:FACTORY``: `ServeSpec`, loading a factory, checking what it built.

Nothing here imports Starlette until `create_factory_app` is called, so
``import asyncsess`` (which exports `ServeSpec`) stays free of the serve extra.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._hook import SessionRunHook
from ._tf import TFSessionRunHook, global_step_read, tf, v1
from ._training import USE_DEFAULT

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.applications import Starlette

    from ._serve import ServeSetupError


@dataclass(frozen=True)
class ServeSpec:
    """What ``python -m asyncsess serve MODULE:FACTORY`` serves, and maybe trains.

    The factory is a callable taking no arguments. It is called once, with a new
    ``tf.Graph`` as the default graph, builds its model there in TF1 style and
    returns a ServeSpec naming the tensors. With a ``train_op`` the service trains
    in the background (a `MonitoredTrainingSession` with these hooks and
    checkpoints) while it serves; without one it only serves, restoring the last
    checkpoint of ``checkpoint_dir`` if there is one. Predictions run on that
    session, batched through a `Batcher`, over TensorFlow Serving's REST API
    (``POST /v1/models/NAME:predict``, one signature, ``serving_default``) and
    ``POST /predict``.

    Attributes:
      inputs: Request names to the tensors they feed (placeholders, usually with
        ``None`` as first dimension so that concurrent requests batch).
      outputs: Response names to the tensors they fetch.
      train_op: Run by every training step (None: serve only).
      loss: A scalar shown by ``GET /status`` and ``/metrics``, fetched with
        every training step.
      hooks: Hooks of the training session (asyncsess or TensorFlow hooks);
        without a ``train_op``, of the serving session, whose runs call none.
      chief_only_hooks: As `MonitoredTrainingSession`'s.
      checkpoint_dir: Checkpoints and summaries (default: ``--logdir``).
      scaffold: As `MonitoredTrainingSession`'s.
      config: A ``tf.compat.v1.ConfigProto`` for the session.
      save_checkpoint_secs: As `MonitoredTrainingSession`'s.
      save_checkpoint_steps: As `MonitoredTrainingSession`'s.
      save_summaries_steps: As `MonitoredTrainingSession`'s.
      model_name: The model's name in TensorFlow Serving's routes,
        ``/v1/models/NAME``.

    Cancellation: plain data; nothing here runs or waits.
    """

    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    train_op: Any = None
    loss: Any = None
    hooks: Sequence[Any] = ()
    chief_only_hooks: Sequence[Any] = ()
    checkpoint_dir: str | os.PathLike[str] | None = None
    scaffold: Any = None
    config: Any = None
    save_checkpoint_secs: float | None = USE_DEFAULT
    save_checkpoint_steps: int | None = USE_DEFAULT
    save_summaries_steps: int | None = USE_DEFAULT
    model_name: str = field(default="default")


@dataclass(frozen=True)
class ServedGraph:
    """A graph the service serves, and trains if it has a train op.

    The demo's (`demo_graph`) or the one a ``serve MODULE:FACTORY`` factory
    built (`asyncsess._serve_factory.build_served`), already checked.
    """

    graph: Any
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    checkpoint_dir: str
    train_op: Any = None
    loss: Any = None
    #: The global step's read tensor (fetched with each training step).
    global_step: Any = None
    hooks: tuple[Any, ...] = ()
    chief_only_hooks: tuple[Any, ...] = ()
    scaffold: Any = None
    config: Any = None
    save_checkpoint_secs: Any = USE_DEFAULT
    save_checkpoint_steps: Any = USE_DEFAULT
    save_summaries_steps: Any = USE_DEFAULT
    model_name: str = "default"
    #: The training step's feeds for a global step (the demo's synthetic data).
    step_feed: Callable[[int], dict[Any, Any]] | None = None
    #: Raises if the checkpoint directory cannot be restored (runs on a thread).
    preflight: Callable[[str], None] | None = None
    #: More keys of ``GET /status``.
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        return self.train_op is not None

    @property
    def batchable(self) -> bool:
        """Whether rows of concurrent requests can share a step.

        True when every input and output has an unknown first dimension (the
        batch's), as TensorFlow Serving's batching assumes.
        """
        tensors = [*self.inputs.values(), *self.outputs.values()]
        return bool(self.inputs) and all(_batch_dim(t) for t in tensors)


def _batch_dim(tensor: Any) -> bool:
    shape = tensor.shape
    return shape.rank is not None and shape.rank >= 1 and shape[0] is None


def demo_graph(
    logdir: str,
    input_dim: int = 4,
    *,
    batch_size: int = 32,
    save_checkpoint_secs: float = 600.0,
    save_summaries_steps: int = 100,
) -> ServedGraph:
    """The demo model as ``python -m asyncsess serve`` trains and serves it."""
    from ._demo import SyntheticData, build_model

    model = build_model(input_dim)
    data = SyntheticData(input_dim, batch_size=batch_size)

    def step_feed(step: int) -> dict[Any, Any]:
        x, y = data.batch(step)
        return {model.x: x, model.y: y}

    def preflight(logdir: str) -> None:
        shape = _checkpoint_input_dim(logdir)
        if shape is not None and shape != input_dim:
            raise ValueError(
                f"The checkpoint in {logdir!r} is of a model with input_dim={shape}, "
                f"not {input_dim}; use that input_dim or another log directory."
            )

    return ServedGraph(
        graph=model.graph,
        inputs={"x": model.x},
        outputs={"y": model.prediction},
        checkpoint_dir=logdir,
        train_op=model.train_op,
        loss=model.loss,
        # build_model orders the model after the hooks' read: the value before
        # the step's increment.
        global_step=global_step_read(model.graph),
        save_checkpoint_secs=save_checkpoint_secs,
        save_summaries_steps=save_summaries_steps,
        step_feed=step_feed,
        preflight=preflight,
        model_name="demo",
        facts={"input_dim": input_dim},
    )


def _checkpoint_input_dim(logdir: str) -> int | None:
    """The demo model's input size in *logdir*'s last checkpoint, if there is one."""
    path = v1.train.latest_checkpoint(logdir)
    if path is None:
        return None
    shapes = dict(v1.train.list_variables(path))
    weights = shapes.get("weights")
    return int(weights[0]) if weights else None


def create_factory_app(
    target: str,
    *,
    logdir: str,
    token: str | None = None,
    batching: bool = True,
    max_batch_size: int = 32,
    batch_timeout_secs: float = 0.001,
    allowed_hosts: tuple[str, ...] | None = None,
    model_name: str | None = None,
    save_checkpoint_secs: float | None = None,
    **options: Any,
) -> Starlette:
    """The app of ``serve MODULE:FACTORY``: the factory's graph, served (and trained).

    Loads *target* (``"package.module:factory"``), calls the factory in a new
    graph and checks the `ServeSpec` it returns; the session opens in the app's
    lifespan. *model_name* (``--model-name``) and *save_checkpoint_secs*
    (``--save-checkpoint-secs``) override the spec's. *options*
    are further `asyncsess._serve_trainer.ServiceConfig` fields (``max_rows``,
    ``step_interval``, ``last_step``, ...).

    Raises:
      ServeSetupError: the target does not import, is not a factory, or built
        something that cannot be served; the message says what and how to fix it.
    """
    served = build_served(load_factory(target), target, logdir)
    if model_name is not None:
        name = _Checker(served.graph, target).model_name(model_name, "--model-name")
        facts = {**served.facts, "model": name}
        served = dataclasses.replace(served, model_name=name, facts=facts)
    if save_checkpoint_secs is not None:
        served = dataclasses.replace(
            served,
            save_checkpoint_secs=save_checkpoint_secs,
            save_checkpoint_steps=None,
        )
    from ._serve_app import create_graph_app

    return create_graph_app(
        served,
        logdir=served.checkpoint_dir,
        token=token,
        batching=batching,
        max_batch_size=max_batch_size,
        batch_timeout_secs=batch_timeout_secs,
        allowed_hosts=allowed_hosts,
        **options,
    )


# -- the import string -----------------------------------------------------------


def load_factory(target: str) -> Callable[[], Any]:
    """The object *target* (``"module:attr.attr"``) names, as uvicorn finds apps.

    Raises:
      ServeSetupError: it does not import, or is not callable.
    """
    module_name, _, attrs = target.partition(":")
    if not module_name or not attrs:
        raise _setup_error(
            f'Import string "{target}" must be in format "<module>:<attribute>" '
            "(for example mypkg.model:build)."
        )
    module = _import(module_name)
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise _setup_error(
                f'Attribute "{attrs}" not found in module "{module_name}".'
            ) from None
    if not callable(obj):
        raise _setup_error(
            f"{target} is {_describe(obj)}, not a factory: name a function that "
            "takes no arguments and returns an asyncsess.ServeSpec."
        )
    factory: Callable[[], Any] = obj
    return factory


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise _setup_error(_raised(f'importing "{module_name}"')) from exc
        raise _setup_error(
            f'Could not import module "{module_name}" (is it on the Python path? '
            f"the current directory is {os.getcwd()!r})."
        ) from None
    except Exception as exc:
        raise _setup_error(_raised(f'importing "{module_name}"')) from exc


def _raised(what: str) -> str:
    """*what* raised the exception being handled: its traceback and message."""
    error = sys.exc_info()[1]
    assert error is not None
    trace = "".join(traceback.format_exception(error)).rstrip()
    return f"{what} raised {type(error).__name__}: {error}\n{trace}"


# -- calling the factory and checking its spec -----------------------------------


def build_served(factory: Callable[[], Any], target: str, logdir: str) -> ServedGraph:
    """Call *factory* in a new graph; what it built, checked, for the service.

    Raises:
      ServeSetupError: the factory raised, or its spec names something that
        cannot be served.
    """
    graph = tf.Graph()
    with graph.as_default():
        try:
            spec = factory()
        except Exception as exc:
            raise _setup_error(_raised(f"the factory {target}")) from exc
        if not isinstance(spec, ServeSpec):
            raise _setup_error(
                f"the factory {target} returned {_describe(spec)}; it must return "
                "an asyncsess.ServeSpec(inputs={...}, outputs={...}, ...)."
            )
        check = _Checker(graph, target)
        inputs = check.tensors("inputs", spec.inputs, feedable=True)
        outputs = check.tensors("outputs", spec.outputs, feedable=False)
        train_op, loss = check.training(spec)
        hooks = check.hooks("hooks", spec.hooks)
        chief_only_hooks = check.hooks("chief_only_hooks", spec.chief_only_hooks)
        step = global_step_read(graph) if train_op is not None else None
    return ServedGraph(
        graph=graph,
        inputs=inputs,
        outputs=outputs,
        checkpoint_dir=check.directory(spec.checkpoint_dir, logdir),
        train_op=train_op,
        loss=loss,
        global_step=step,
        hooks=hooks,
        chief_only_hooks=chief_only_hooks,
        scaffold=spec.scaffold,
        config=spec.config,
        save_checkpoint_secs=spec.save_checkpoint_secs,
        save_checkpoint_steps=spec.save_checkpoint_steps,
        save_summaries_steps=spec.save_summaries_steps,
        model_name=check.model_name(spec.model_name),
        facts={
            "model": spec.model_name,
            "inputs": _signature_facts(inputs),
            "outputs": _signature_facts(outputs),
        },
    )


def _signature_facts(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Name, dtype and shape of each tensor, for ``GET /status``."""
    return {
        name: {
            "dtype": tensor.dtype.name,
            "shape": None if tensor.shape.rank is None else tensor.shape.as_list(),
        }
        for name, tensor in tensors.items()
    }


class _Checker:
    """Checks of one factory's `ServeSpec`; each failure names the culprit."""

    def __init__(self, graph: Any, target: str) -> None:
        self.graph, self.target = graph, target

    def fail(self, problem: str) -> ServeSetupError:
        return _setup_error(
            f"the factory {self.target} returned a ServeSpec whose {problem}"
        )

    def tensors(self, what: str, given: Any, *, feedable: bool) -> dict[str, Any]:
        if not isinstance(given, Mapping) or not given:
            raise self.fail(
                f"{what} is {_describe(given)}; it must be a non-empty dict of "
                "names to tensors, e.g. {'x': x}."
            )
        tensors: dict[str, Any] = {}
        seen: dict[Any, str] = {}
        for name, value in given.items():
            label = f"{what}[{name!r}]"
            if not isinstance(name, str) or not name:
                raise self.fail(f"{what} has the key {name!r}; names must be strings.")
            tensor = self.tensor(label, value)
            if feedable and not self.graph.is_feedable(tensor):
                raise self.fail(
                    f"{label} ({tensor.name}) cannot be fed; serve a placeholder "
                    "(tf.compat.v1.placeholder) as the input."
                )
            if feedable and tensor.ref() in seen:
                raise self.fail(
                    f"{label} is the same tensor ({tensor.name}) as "
                    f"{what}[{seen[tensor.ref()]!r}]; give each input its own."
                )
            seen[tensor.ref()] = name
            tensors[name] = tensor
        return tensors

    def tensor(self, label: str, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = self.graph.as_graph_element(value, allow_operation=False)
            except (KeyError, ValueError, TypeError) as exc:
                raise self.fail(
                    f"{label} names no tensor of the graph: {exc}"
                ) from None
        if not isinstance(value, tf.Tensor) or not hasattr(value, "graph"):
            raise self.fail(
                f"{label} is {_describe(value)}; expected a tf.Tensor of the graph "
                "the factory built (for a variable, serve tf.identity(v))."
            )
        self.same_graph(label, value)
        return value

    def same_graph(self, label: str, value: Any) -> None:
        if value.graph is not self.graph:
            raise self.fail(
                f"{label} ({value.name}) belongs to another graph; build every "
                "tensor inside the factory, which runs with a new default graph "
                "(a graph made outside it, or a tf.Graph().as_default() block "
                "inside it, is not served)."
            )

    def training(self, spec: ServeSpec) -> tuple[Any, Any]:
        train_op, loss = spec.train_op, spec.loss
        if train_op is not None:
            if not isinstance(train_op, (tf.Operation, tf.Tensor)):
                raise self.fail(
                    f"train_op is {_describe(train_op)}; expected the tf.Operation "
                    "an optimizer's minimize() returns (or None to serve only)."
                )
            self.same_graph("train_op", train_op)
            if v1.train.get_global_step(self.graph) is None:
                raise self.fail(
                    "graph has no global step, which training needs (checkpoints "
                    "are numbered by it): create it with "
                    "tf.compat.v1.train.get_or_create_global_step() and pass it to "
                    "minimize(loss, global_step=...)."
                )
        if loss is not None:
            loss = self.tensor("loss", loss)
            if loss.shape.rank not in (None, 0):
                raise self.fail(
                    f"loss ({loss.name}) has shape {loss.shape}; expected a scalar "
                    "(tf.reduce_mean(...))."
                )
        return train_op, loss

    def hooks(self, what: str, hooks: Any) -> tuple[Any, ...]:
        if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Sequence):
            raise self.fail(f"{what} is {_describe(hooks)}; expected a list of hooks.")
        for i, hook in enumerate(hooks):
            if not isinstance(hook, (SessionRunHook, TFSessionRunHook)):
                raise self.fail(
                    f"{what}[{i}] is {_describe(hook)}; expected an "
                    "asyncsess.SessionRunHook or a tf.compat.v1.train.SessionRunHook."
                )
        return tuple(hooks)

    def directory(self, given: Any, logdir: str) -> str:
        if given is None:
            return logdir
        if not isinstance(given, (str, os.PathLike)) or not os.fspath(given):
            raise self.fail(
                f"checkpoint_dir is {_describe(given)}; expected a directory path "
                "(or None for --logdir)."
            )
        return str(os.fspath(given))

    def model_name(self, name: Any, what: str = "") -> str:
        if not isinstance(name, str) or not name or "/" in name or ":" in name:
            problem = (
                f"is {name!r}; expected a non-empty name without '/' or ':' (it is "
                "the NAME of /v1/models/NAME)."
            )
            if what:
                raise _setup_error(f"{what} {problem}")
            raise self.fail(f"model_name {problem}")
        return name


def _setup_error(message: str) -> ServeSetupError:
    # _serve (the command line) is imported only when something cannot be served.
    from ._serve import ServeSetupError

    return ServeSetupError(message)


def _describe(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (a {type(obj).__name__})"
