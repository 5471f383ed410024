"""The hooks' file helpers: event writers, step estimates, background checkpoints.

Everything here that touches the disk runs on a thread: the session's worker
thread (through `run_in_session_thread`) or, for background writes, a
`WorkerThread` of their own.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from .._backend import current_bridge
from .._tf import FileWriterCache, session_interface, tf, v1
from .._worker import WorkerThread, run_in_session_thread

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._backend import LoopBridge

logger = logging.getLogger("asyncsess.hooks")


async def open_writer(logdir: Any) -> Any:
    """TF's cached `FileWriter` for *logdir* (creating it writes an event file)."""
    return await run_in_session_thread(FileWriterCache.get, logdir)


async def flush_writer(writer: Any) -> None:
    """Flush *writer*'s pending events to disk, off the event loop."""
    if writer is not None:
        await run_in_session_thread(writer.flush)


class StepEstimate:
    """Estimates the global step after a run from the value fetched during it.

    The value fetched with a step is read concurrently with the ops that
    increment it, so it is the step before or after the run. The estimate adds
    the largest per-run increment observed so far (between fetched values, and
    between a fetched value and the exact read that followed it); until one is
    observed it is "unknown" and hooks confirm with a read. Hooks read the exact
    step only when the estimate says they may trigger, so an overestimate costs
    one read and the estimate never delays a trigger once the increment is known
    (tests/hooks/test_checkpoint_saver.py::test_steps_larger_than_one_per_run).
    """

    __slots__ = ("_delta", "_last")

    #: What `after` returns while no increment was observed: any timer triggers.
    UNKNOWN = 2**62

    def __init__(self) -> None:
        self._last: int | None = None
        self._delta = 0

    def reset(self) -> None:
        """Forget the history (a new session may start at another step)."""
        self._last = None
        self._delta = 0

    def after(self, fetched: int) -> int:
        """The estimated step after the run in which *fetched* was read."""
        last, self._last = self._last, fetched
        if last is not None and fetched - last > self._delta:
            self._delta = fetched - last
        return fetched + self._delta if self._delta > 0 else self.UNKNOWN

    def confirm(self, fetched: int, exact: int) -> None:
        """Learn from the exact step read after the run in which *fetched* was read."""
        if exact - fetched > self._delta:
            self._delta = exact - fetched


def _save_v2_ops(saver: Any, graph: Any) -> list[Any] | None:
    """The SaveV2 ops *saver*'s save tensor runs, in the order found.

    None if the saver has no save tensor, or saves in the deprecated V1 format
    (which is saved synchronously).
    """
    saver_def = getattr(saver, "saver_def", None)
    if saver_def is None or not saver_def.save_tensor_name:
        return None
    stack = [graph.as_graph_element(saver_def.save_tensor_name).op]
    seen: set[str] = set()
    found: list[Any] = []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type in ("Save", "SaveSlices"):
            return None
        if op.type == "SaveV2":
            found.append(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return found


def snapshot_tensors(saver: Any, graph: Any) -> list[Any] | None:
    """The tensors *saver*'s SaveV2 ops write, or None if it cannot be fed.

    Feeding these tensors with values fetched earlier makes the saver write that
    snapshot, whatever the variables hold by then.
    """
    tensors: list[Any] = []
    for op in _save_v2_ops(saver, graph) or ():
        tensors.extend(t for t in op.inputs[3:] if t not in tensors)
    if not tensors or not all(graph.is_feedable(t) for t in tensors):
        return None
    return tensors


def _saved_keys_and_tensors(saver: Any, graph: Any) -> list[tuple[str, Any]] | None:
    """(checkpoint key, tensor) for each tensor *saver*'s SaveV2 ops write.

    None if the saver cannot be snapshotted in TensorFlow: no V2 save op, a
    sliced (partitioned) tensor, a key saved twice, or a shape not fully known.
    """
    saved: dict[str, Any] = {}
    for op in _save_v2_ops(saver, graph) or ():
        names = tf.get_static_value(op.inputs[1])
        slices = tf.get_static_value(op.inputs[2])
        if names is None or slices is None or any(slices.tolist()):
            return None
        for raw, tensor in zip(names.tolist(), op.inputs[3:], strict=True):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            if saved.setdefault(key, tensor) is not tensor:
                return None
            if not tensor.shape.is_fully_defined():
                return None
    return sorted(saved.items()) or None


class ShadowSnapshot:
    """Snapshots a saver's variables inside TensorFlow, then writes them.

    One non-trainable "shadow" variable per tensor the saver writes, kept out of
    every collection (so no `Saver`, `Scaffold` init or ready op sees them), an
    op that copies every saved tensor into its shadow (running it initializes
    the shadows), and a second `Saver` writing the shadows under the original
    checkpoint keys. The original saver still does the save (file names, the
    ``checkpoint`` state, ``max_to_keep``, the meta graph): `session_for` gives
    it a session whose run of its save op runs the shadow saver's instead.
    """

    def __init__(self, saver: Any, graph: Any, saved: list[tuple[str, Any]]) -> None:
        self._saver_def = saver.saver_def
        with graph.as_default(), graph.control_dependencies(None):
            with v1.name_scope("asyncsess_snapshot"):
                shadows: dict[str, Any] = {}
                copies = []
                for index, (key, tensor) in enumerate(saved):
                    with graph.device(tensor.device):
                        shadow = v1.Variable(
                            lambda t=tensor: tf.zeros(t.shape, t.dtype),
                            trainable=False,
                            collections=[],
                            use_resource=True,
                            name=f"shadow_{index}",
                        )
                        copies.append(shadow.assign(tensor, read_value=False))
                    shadows[key] = shadow
                self.snapshot_op = tf.group(*copies, name="snapshot")
            self.saver = v1.train.Saver(
                var_list=shadows,
                sharded=self._saver_def.sharded,
                write_version=self._saver_def.version,
                max_to_keep=None,
                name="asyncsess_snapshot_saver",
            )
        self.shadows = list(shadows.values())

    def session_for(self, session: Any) -> Any:
        """*session*, but running the original save op writes the shadows."""
        original = self._saver_def
        shadow = self.saver.saver_def

        def redirect(fetches: Any, feed_dict: Any) -> tuple[Any, Any]:
            if (
                fetches == original.save_tensor_name
                and feed_dict is not None
                and set(feed_dict) == {original.filename_tensor_name}
            ):
                filename = feed_dict[original.filename_tensor_name]
                return shadow.save_tensor_name, {shadow.filename_tensor_name: filename}
            return fetches, feed_dict

        return _rewriting_session(session, redirect)


def shadow_snapshot(saver: Any, graph: Any) -> ShadowSnapshot | None:
    """A `ShadowSnapshot` of *saver* built in *graph*, or None if unsupported.

    Builds ops: call it where the graph may be modified.
    """
    saved = _saved_keys_and_tensors(saver, graph)
    if saved is None:
        return None
    try:
        return ShadowSnapshot(saver, graph, saved)
    except (TypeError, ValueError) as exc:
        logger.debug("No in-TensorFlow snapshot for %r: %s", saver, exc)
        return None


def feeding_session(session: Any, feeds: dict[Any, Any]) -> Any:
    """A session for `Saver.save` whose runs also feed *feeds*."""
    return _rewriting_session(
        session, lambda fetches, feed_dict: (fetches, {**feeds, **(feed_dict or {})})
    )


def _rewriting_session(
    session: Any, rewrite: Callable[[Any, Any], tuple[Any, Any]]
) -> Any:
    """*session* for `Saver.save`, with each run's fetches and feeds rewritten."""
    return _rewriting_session_class()(session, rewrite)


@functools.cache
def _rewriting_session_class() -> type:
    # Built once, on first use: TF's SessionInterface is imported lazily.
    class RewritingSession(session_interface()):  # type: ignore[misc]
        def __init__(self, session: Any, rewrite: Any) -> None:
            self._session, self._rewrite = session, rewrite

        @property
        def graph(self) -> Any:
            return self._session.graph

        @property
        def sess_str(self) -> Any:
            return self._session.sess_str

        def run(
            self,
            fetches: Any,
            feed_dict: Any = None,
            options: Any = None,
            run_metadata: Any = None,
        ) -> Any:
            fetches, feed_dict = self._rewrite(fetches, feed_dict)
            return self._session.run(fetches, feed_dict, options, run_metadata)

    return RewritingSession


class BackgroundWrite:
    """One checkpoint written from a snapshot on a thread of its own.

    The thread is a `WorkerThread` in the snapshot session's graph that runs
    this one write and exits. `Saver.save` updates the ``checkpoint`` state file
    only after the data and index files are complete, so
    `tf.train.latest_checkpoint` never sees a partial checkpoint, even if the
    process is killed mid-write.
    """

    def __init__(self, session: Any, step: int, save: Callable[[Any], Any]) -> None:
        """Start ``save(session)``, inside the session's graph, as *step*'s write.

        *session* is a snapshot's session (`feeding_session`,
        `ShadowSnapshot.session_for`); ``save`` does the actual `Saver.save`.
        """
        self.step = step
        self._bridge: LoopBridge = current_bridge()
        thread = WorkerThread(
            session.graph, self._bridge, name=f"asyncsess-checkpoint-{step}"
        )
        self._completion = thread.submit(save, session)
        thread.stop()  # it exits once the write returns

    @property
    def done(self) -> bool:
        """Whether the write finished (read on the event loop)."""
        return self._completion.done

    async def wait(self) -> Any:
        """Wait for the write; return the checkpoint path or raise its error.

        Cancellation: returns at once; the write goes on on its thread.
        """
        await self._bridge.wait(self._completion)
        return self._completion.result()
