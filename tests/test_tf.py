"""asyncsess._tf: each wrapper of a TensorFlow private API, on the installed TF.

`_tf.py` is the one door to TensorFlow's private names. A TensorFlow upgrade that
renames, removes or changes one fails here first: `TestPrivateNames` names the
missing attribute and the wrapper to fix, and the other tests check that each
wrapper still does what asyncsess relies on.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tensorflow as tf

from asyncsess import _tf

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

v1 = tf.compat.v1

#: (wrapper in asyncsess._tf, "module:attribute.path" of what it uses).
PRIVATE_NAMES = [
    ("global_step_read", "tensorflow.python.training.training_util:"
     "_get_or_create_global_step_read"),
    ("as_graph_element", "tensorflow.python.training.basic_session_run_hooks:"
     "_as_graph_element"),
    ("chrome_trace", "tensorflow.python.client.timeline:Timeline"),
    ("meta_graph_def", "tensorflow.python.framework.meta_graph:"
     "create_meta_graph_def"),
    ("session_interface", "tensorflow.python.client.session:SessionInterface"),
    ("fetch_plan", "tensorflow.python.client.session:_FetchHandler"),
    ("fetch_plan", "tensorflow.python.client.session:BaseSession._extend_graph"),
    ("fetch_plan", "tensorflow.python.framework.ops:SymbolicTensor._as_tf_output"),
    ("tf_output", "tensorflow.python.framework.ops:SymbolicTensor._as_tf_output"),
    ("fetch_plan", "tensorflow.python.framework.ops:Operation._c_op"),
    ("options_buffer", "tensorflow.python.client.pywrap_tf_session:"
     "TF_NewBufferFromString"),
    ("session_run", "tensorflow.python.client.session:"
     "BaseSession._call_tf_sessionrun"),
    ("session_run", "tensorflow.python.client.session:BaseSession._do_call"),
    ("feed_converter", "tensorflow.python.client.session:_convert_to_numpy_obj"),
    ("feed_converter", "tensorflow.python.ops.session_ops:TensorHandle"),
    ("unfinalize_graph", "tensorflow.python.framework.ops:Graph._unsafe_unfinalize"),
    ("session_closed", "tensorflow.python.client.session:BaseSession.close"),
    ("make_callable_from_options", "tensorflow.python.client.session:"
     "BaseSession._make_callable_from_options"),
    ("plain_queue_runner", "tensorflow.python.training.queue_runner_impl:"
     "QueueRunner._run"),
    ("session_manager", "tensorflow.python.training.session_manager:"
     "SessionManager._restore_checkpoint"),
    ("try_ready_session", "tensorflow.python.training.session_manager:"
     "SessionManager._try_run_local_init_op"),
    ("try_ready_session", "tensorflow.python.training.session_manager:"
     "SessionManager._model_ready"),
    ("try_ready_session", "tensorflow.python.training.session_manager:"
     "SessionManager._safe_close"),
    ("CallableOptions", "tensorflow.core.protobuf.config_pb2:CallableOptions"),
    ("saved_model_loader", "tensorflow.python.saved_model.loader_impl:"
     "SavedModelLoader"),
    ("datatype_name", "tensorflow.core.framework.types_pb2:DataType"),
]  # fmt: skip


def _resolve(path: str) -> Any:
    module_name, _, attributes = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for name in attributes.split("."):
        obj = getattr(obj, name)
    return obj


class TestPrivateNames:
    @pytest.mark.parametrize(("wrapper", "path"), PRIVATE_NAMES)
    def test_tensorflow_still_has_it(self, wrapper: str, path: str) -> None:
        assert hasattr(_tf, wrapper), f"asyncsess._tf.{wrapper} is gone"
        try:
            _resolve(path)
        except (ImportError, AttributeError) as exc:
            pytest.fail(
                f"TensorFlow {tf.__version__} has no {path} ({exc}), which "
                f"asyncsess._tf.{wrapper} uses: update that wrapper."
            )

    def test_every_wrapper_is_listed(self) -> None:
        # A new wrapper of a private API gets a row above and a test below.
        listed = {wrapper for wrapper, _ in PRIVATE_NAMES}
        functions = {
            name
            for name in _tf.__all__
            if callable(getattr(_tf, name))
            and getattr(getattr(_tf, name), "__module__", None) == _tf.__name__
        }
        unlisted = functions - listed - {"default_graph"}
        assert not unlisted, f"add to PRIVATE_NAMES and test: {sorted(unlisted)}"


@pytest.fixture
def graph() -> Iterator[tf.Graph]:
    g = tf.Graph()
    with g.as_default():
        yield g


@pytest.fixture
def sess(graph: tf.Graph) -> Iterator[Any]:
    with v1.Session(graph=graph) as s:
        yield s


class TestGraphHelpers:
    def test_global_step_read(self, graph: tf.Graph) -> None:
        assert _tf.global_step_read(graph) is None
        step = v1.train.get_or_create_global_step()
        read = _tf.global_step_read(graph)
        assert read is not None
        assert read is _tf.global_step_read(graph)  # created once
        with v1.Session(graph=graph) as sess:
            sess.run(step.initializer)
            assert sess.run(read) == 0

    def test_as_graph_element(self, graph: tf.Graph) -> None:
        x = tf.constant(1.0, name="x")
        assert _tf.as_graph_element("x:0") is x
        assert _tf.as_graph_element(x) is x
        with pytest.raises(KeyError, match="does not exist"):
            _tf.as_graph_element("missing:0")

    def test_meta_graph_def(self, graph: tf.Graph) -> None:
        v1.get_variable("w", initializer=1.0)
        saver = v1.train.Saver()
        meta = _tf.meta_graph_def(graph, saver.saver_def)
        assert meta.saver_def == saver.saver_def
        assert any(node.name == "w" for node in meta.graph_def.node)

    def test_unfinalize_graph(self, graph: tf.Graph) -> None:
        graph.finalize()
        _tf.unfinalize_graph(graph)
        assert not graph.finalized
        tf.constant(1.0)  # ops can be added again


class TestSessionHelpers:
    def test_session_interface(self) -> None:
        assert issubclass(v1.Session, _tf.session_interface())

    def test_session_closed(self, graph: tf.Graph) -> None:
        sess = v1.Session(graph=graph)
        assert not _tf.session_closed(sess)
        sess.close()
        assert _tf.session_closed(sess)
        assert not _tf.session_closed(object())

    def test_chrome_trace(self, graph: tf.Graph, sess: Any) -> None:
        total = tf.reduce_sum(tf.ones([4]))
        metadata = v1.RunMetadata()
        sess.run(
            total,
            options=v1.RunOptions(trace_level=_tf.FULL_TRACE),
            run_metadata=metadata,
        )
        trace = json.loads(_tf.chrome_trace(metadata.step_stats, True, False))
        assert trace["traceEvents"]

    def test_make_callable_from_options(self, graph: tf.Graph, sess: Any) -> None:
        x = v1.placeholder(tf.float32, [], name="x")
        var = v1.get_variable("v", initializer=0.0, use_resource=True)
        assign = var.assign(x, read_value=False)
        sess.run(var.initializer)
        options = _tf.CallableOptions()
        options.feed.append(x.name)
        options.target.append(assign.name)
        run = _tf.make_callable_from_options(sess, options)
        run(np.float32(3.0))
        assert sess.run(var) == 3.0


class TestRunPieces:
    def test_fetch_plan_and_session_run(self, graph: tf.Graph, sess: Any) -> None:
        x = v1.placeholder(tf.float32, [2], name="x")
        fetches = {"sum": tf.reduce_sum(x), "op": tf.no_op()}
        handler, fetch_list, target_list = _tf.fetch_plan(sess, fetches)
        feeds = {_tf.tf_output(x): np.array([1.0, 2.0], np.float32)}
        options = _tf.options_buffer(v1.RunOptions(inter_op_thread_pool=-1))
        values = _tf.session_run(sess, options, feeds, fetch_list, target_list)
        assert handler.build_results(sess, values) == {"sum": 3.0, "op": None}

    def test_session_run_rewrites_errors(self, graph: tf.Graph, sess: Any) -> None:
        x = v1.placeholder(tf.float32, [], name="x")
        checked = tf.debugging.check_numerics(x / 0.0, "inf", name="checked")
        _, fetch_list, target_list = _tf.fetch_plan(sess, checked)
        feeds = {_tf.tf_output(x): np.float32(1.0)}
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            _tf.session_run(sess, None, feeds, fetch_list, target_list)
        assert info.value.op is graph.get_operation_by_name("checked")

    def test_fetch_plan_raises_what_session_run_raises(
        self, graph: tf.Graph, sess: Any
    ) -> None:
        with pytest.raises(TypeError, match="has invalid type"):
            _tf.fetch_plan(sess, 3.5)

    def test_feed_converter(self, graph: tf.Graph) -> None:
        x = v1.placeholder(tf.float32, [2], name="x")
        small = v1.placeholder(tf.int8, [], name="small")
        convert = _tf.feed_converter(graph, x)
        array = convert([1, 2])
        assert array.dtype == np.float32
        assert array.tolist() == [1.0, 2.0]
        assert convert([1.0, 2.0, 3.0]) is None  # a shape x cannot take
        assert convert(tf.constant([1.0, 2.0])) is None  # Session.run's own path
        assert convert("not a number") is None
        assert _tf.feed_converter(graph, small)(1000) is None  # int8 overflow
        assert _tf.feed_converter(graph, small)(7) == 7


class _OwnLoop(v1.train.QueueRunner):  # type: ignore[misc,name-defined]
    def _run(self, sess: Any, enqueue_op: Any, coord: Any = None) -> None:
        return None


class _Plain(v1.train.QueueRunner):  # type: ignore[misc,name-defined]
    pass


class TestQueueRunners:
    def test_plain_queue_runner(self, graph: tf.Graph) -> None:
        queue = tf.queue.FIFOQueue(4, tf.float32)
        enqueue = queue.enqueue(1.0)
        assert _tf.plain_queue_runner(v1.train.QueueRunner(queue, [enqueue]))
        assert _tf.plain_queue_runner(_Plain(queue, [enqueue]))
        assert not _tf.plain_queue_runner(_OwnLoop(queue, [enqueue]))
        assert not _tf.plain_queue_runner(object())


class TestSessionManager:
    def _model(self) -> tuple[Any, Any]:
        v1.train.get_or_create_global_step()
        w = v1.get_variable("w", initializer=5.0)
        return w, v1.train.Saver()

    def test_session_manager_reports_restores(
        self, graph: tf.Graph, tmp_path: Path
    ) -> None:
        w, saver = self._model()
        manager = _tf.session_manager(graph=graph)
        init = v1.global_variables_initializer()
        sess = manager.prepare_session(
            "", init_op=init, saver=saver, checkpoint_dir=str(tmp_path)
        )
        assert manager.restored is False
        saver.save(sess, str(tmp_path / "model.ckpt"))
        sess.close()
        sess = manager.prepare_session(
            "", init_op=init, saver=saver, checkpoint_dir=str(tmp_path)
        )
        assert manager.restored is True
        assert sess.run(w) == 5.0
        sess.close()

    def test_try_ready_session(self, graph: tf.Graph) -> None:
        self._model()
        manager = _tf.session_manager(
            graph=graph, ready_op=v1.report_uninitialized_variables()
        )
        sess, message = _tf.try_ready_session(manager, "", None)
        assert sess is None
        assert "w" in str(message)

    def test_try_ready_session_ready(self, graph: tf.Graph) -> None:
        tf.constant(1.0)
        manager = _tf.session_manager(
            graph=graph, ready_op=v1.report_uninitialized_variables()
        )
        sess, message = _tf.try_ready_session(manager, "", None)
        assert message is None
        assert isinstance(sess, v1.Session)
        assert not _tf.session_closed(sess)
        sess.close()


class TestSavedModel:
    def test_saved_model_loader(self, graph: tf.Graph, tmp_path: Any) -> None:
        tf.identity(v1.Variable(3.0), name="y")
        export = str(tmp_path / "model")
        with v1.Session(graph=graph) as s:
            s.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(export)
            builder.add_meta_graph_and_variables(s, ["serve"])
            builder.save()
        loader = _tf.saved_model_loader(export)
        assert list(loader.get_meta_graph_def_from_tags(["serve"]).meta_info_def.tags)
        fresh = tf.Graph()
        saver, _ = loader.load_graph(fresh, ["serve"])
        with v1.Session(graph=fresh) as s:
            loader.restore_variables(s, saver)
            loader.run_init_ops(s, ["serve"])
            assert s.run("y:0") == 3.0

    def test_datatype_name(self) -> None:
        assert _tf.datatype_name(tf.float32.as_datatype_enum) == "DT_FLOAT"
        assert _tf.datatype_name(tf.string.as_datatype_enum) == "DT_STRING"
