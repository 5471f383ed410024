"""CheckpointSaverHook and CheckpointSaverListener: TF's checkpoints, off the loop.

Optionally written in the background from an in-memory snapshot, and saved when
an error or a cancellation ends the session.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
from typing import TYPE_CHECKING, Any

import anyio

from .._hook import SessionRunHook, describe
from .._tf import (
    SecondOrStepTimer,
    SessionLog,
    SessionRunArgs,
    TFCheckpointSaverListener,
    meta_graph_def,
    unfinalize_graph,
    v1,
    write_graph,
)
from .._worker import run_in_session_thread
from ._checks import check_one_of, required_global_step
from ._writers import (
    BackgroundWrite,
    ShadowSnapshot,
    StepEstimate,
    feeding_session,
    flush_writer,
    open_writer,
    shadow_snapshot,
    snapshot_tensors,
)

if TYPE_CHECKING:
    from .._tf import SessionRunContext, SessionRunValues

logger = logging.getLogger("asyncsess.hooks")

_LISTENER_METHODS = ("begin", "before_save", "after_save", "end")
_UNPLANNED: Any = object()


class CheckpointSaverListener:
    """Acts before or after `CheckpointSaverHook` saves a checkpoint, async.

    The async counterpart of `tf.compat.v1.train.CheckpointSaverListener`, with
    the same methods called at the same points: `begin` before the session is
    used, `before_save`/`after_save` around each save, `end` at the end of the
    session. `after_save` returning True requests a stop, as in TensorFlow.
    TensorFlow's own (sync) listeners are accepted by the hook unmodified and
    run on the session's worker thread.

    Cancellation: each method is awaited in the task running the hook, so it is
    cancelled with that task at its next await.
    """

    async def begin(self) -> None:
        """Called once before using the session; the graph can still change."""

    async def before_save(self, session: Any, global_step_value: int) -> None:
        """Called before each checkpoint is saved (or snapshotted)."""

    async def after_save(self, session: Any, global_step_value: int) -> bool | None:
        """Called once each checkpoint's files are complete; True requests a stop."""
        return None

    async def end(self, session: Any, global_step_value: int) -> None:
        """Called at the end of the session, after the last save."""


def _check_listener(index: int, listener: Any) -> None:
    if isinstance(listener, (CheckpointSaverListener, TFCheckpointSaverListener)):
        return
    if all(callable(getattr(listener, m, None)) for m in _LISTENER_METHODS):
        return
    raise TypeError(
        "listeners must be CheckpointSaverListener instances (asyncsess.hooks or "
        f"tf.compat.v1.train). Received: listeners[{index}]={describe(listener)}"
    )


async def _call_listener(listener: Any, method: str, *args: Any) -> Any:
    """Await an async listener's method; run a sync one on the worker thread."""
    if isinstance(listener, CheckpointSaverListener):
        result = getattr(listener, method)(*args)
        return await result if inspect.isawaitable(result) else result
    return await run_in_session_thread(getattr(listener, method), *args)


class CheckpointSaverHook(SessionRunHook):
    """Saves checkpoints every N steps or seconds, like TensorFlow's.

    Same arguments, defaults, triggers and files as
    `tf.compat.v1.train.CheckpointSaverHook`: a checkpoint when the session is
    created, then whenever the timer triggers, and at `end` if the last step was
    not saved; ``graph.pbtxt``, the graph and meta graph in the event file, and a
    ``SessionLog.CHECKPOINT`` event per save. Every save and write runs off the
    event loop. The timer uses the global step fetched with each step; the step
    is read once more only when a save may be due (TF reads it on every step).

    Args:
      checkpoint_dir: Base directory for the checkpoint files.
      save_secs: Save every N seconds.
      save_steps: Save every N steps.
      saver: A `Saver` to save with.
      checkpoint_basename: Base name of the checkpoint files.
      scaffold: A `Scaffold` to get the saver from.
      listeners: `CheckpointSaverListener`s, async or TensorFlow's own.
      save_graph_def: Whether to write ``graph.pbtxt`` and ``.meta`` files.
      background_write: Pause training only to snapshot the variables in host
        memory and write the files on a background thread while training goes
        on; at most one write is in flight, `end` waits for it and a failed
        write raises from the next step. Listeners' ``after_save`` runs once the
        files are complete.
      save_on_error: Also save when an error or a cancellation ends the
        session (the error still propagates).

    Raises:
      ValueError: both or neither of ``save_secs`` and ``save_steps``, a
        negative one, or both ``saver`` and ``scaffold``.
      TypeError: a bad ``checkpoint_dir``, interval or listener.

    Cancellation: each method is cancelled at its next await; a save already
    handed to the worker thread completes there. A background write goes on on
    its own thread; `end` and `on_error` wait for it.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        save_secs: float | None = None,
        save_steps: int | None = None,
        saver: Any = None,
        checkpoint_basename: str = "model.ckpt",
        scaffold: Any = None,
        listeners: Any = None,
        save_graph_def: bool = True,
        *,
        background_write: bool = False,
        save_on_error: bool = False,
    ) -> None:
        if saver is not None and scaffold is not None:
            raise ValueError(
                "You cannot provide both saver and scaffold. "
                f"Received: saver={describe(saver)}, scaffold={describe(scaffold)}"
            )
        if not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(
                "checkpoint_dir must be a path (str). "
                f"Received: checkpoint_dir={checkpoint_dir!r}"
            )
        check_one_of(("save_secs", "save_steps"), (save_secs, save_steps))
        self._listeners = list(listeners or [])
        for index, listener in enumerate(self._listeners):
            _check_listener(index, listener)
        logger.info("Create CheckpointSaverHook.")
        self._checkpoint_dir = os.fspath(checkpoint_dir)
        self._save_path = os.path.join(self._checkpoint_dir, checkpoint_basename)
        self._saver = saver
        self._scaffold = scaffold
        self._timer = SecondOrStepTimer(every_secs=save_secs, every_steps=save_steps)
        self._save_graph_def = save_graph_def
        self._background_write = background_write
        self._save_on_error = save_on_error
        self._sync_listeners = not any(
            isinstance(listener, CheckpointSaverListener)
            for listener in self._listeners
        )
        self._estimate = StepEstimate()
        self._summary_writer: Any = None
        self._global_step_tensor: Any = None
        self._snapshot: Any = _UNPLANNED
        self._in_flight: BackgroundWrite | None = None

    # -- the hook ----------------------------------------------------------------

    async def begin(self) -> None:
        await anyio.to_thread.run_sync(remove_stale_temp_dirs, self._save_path)
        self._summary_writer = await open_writer(self._checkpoint_dir)
        self._global_step_tensor = required_global_step("CheckpointSaverHook")
        if self._background_write:
            # Build the in-TensorFlow snapshot now if the saver is already known
            # (the Scaffold's default saver appears only later, at finalize).
            graph = v1.get_default_graph()
            if self._saver is not None or self._scaffold is not None:
                known = self._get_saver(graph) is not None
            else:
                known = len(graph.get_collection(v1.GraphKeys.SAVERS)) == 1
            if known:
                self._plan(graph)
        for listener in self._listeners:
            await _call_listener(listener, "begin")

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self._estimate.reset()
        # After a recovery, a write still using the closed session may have failed.
        await self._finish_write_quietly(session)
        step = await run_in_session_thread(self._write_graphs, session)
        # The checkpoint saved here is the state at step "global_step".
        await self._save(session, step, background=self._background_write)
        self._timer.update_last_triggered_step(step)

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs:
        return SessionRunArgs(self._global_step_tensor)

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        session = run_context.session
        write = self._in_flight
        if write is not None and write.done and await self._finish_write(session):
            run_context.request_stop()
        fetched = int(run_values.results)
        if not self._timer.should_trigger_for_step(self._estimate.after(fetched)):
            return
        # A save may be due: read the real step after the train op, as TF does.
        step = await self._read_step(session)
        self._estimate.confirm(fetched, step)
        if self._timer.should_trigger_for_step(step):
            self._timer.update_last_triggered_step(step)
            if await self._save(session, step, background=self._background_write):
                run_context.request_stop()

    async def end(self, session: Any) -> None:
        await self._finish_write(session)
        last_step = int(
            await run_in_session_thread(session.run, self._global_step_tensor)
        )
        if last_step != self._timer.last_triggered_step():
            await self._save(session, last_step, background=False)
        for listener in self._listeners:
            await _call_listener(listener, "end", session, last_step)
        await flush_writer(self._summary_writer)

    async def on_error(self, exc: BaseException, session: Any) -> None:
        """Finish the write in flight, save if ``save_on_error``, flush events.

        Cancellation: the session calls it shielded and bounded by its
        ``stop_grace_period_secs``.
        """
        try:
            await self._finish_write_quietly(session)
            if self._save_on_error:
                await self._save_final(exc, session)
        finally:
            await flush_writer(self._summary_writer)

    # -- saving ------------------------------------------------------------------

    async def _read_step(self, session: Any) -> int:
        return int(await run_in_session_thread(session.run, self._global_step_tensor))

    async def _save(self, session: Any, step: int, *, background: bool) -> bool:
        """Save the checkpoint of *step*; True if a listener requested a stop."""
        should_stop = await self._finish_write(session)
        plan: Any = None
        if background:
            plan = self._snapshot
            if plan is _UNPLANNED:
                plan = await run_in_session_thread(self._plan, session.graph)
        if plan is None and self._sync_listeners:
            stop = await run_in_session_thread(self._save_blocking, session, step)
            return bool(stop) or should_stop
        logger.info("Calling checkpoint listeners before saving checkpoint %d...", step)
        for listener in self._listeners:
            await _call_listener(listener, "before_save", session, step)
        if plan is None:
            await run_in_session_thread(self._write, session, step)
            return await self._after_save(session, step) or should_stop
        # Training pauses only for the snapshot; the write goes on in the
        # background and the listeners' after_save runs once it is complete.
        if isinstance(plan, ShadowSnapshot):
            # A copy inside TensorFlow, with the GIL released.
            await run_in_session_thread(session.run, plan.snapshot_op)
            writing = plan.session_for(session)
        else:
            values = await run_in_session_thread(session.run, plan)
            writing = feeding_session(session, dict(zip(plan, values, strict=True)))
        self._in_flight = BackgroundWrite(writing, step, self._writer_for(step))
        return should_stop

    def _writer_for(self, step: int) -> Any:
        return lambda writing: self._write(writing, step)

    def _save_blocking(self, session: Any, step: int) -> bool:
        """TF's ``_save``, all on the worker thread (sync listeners only)."""
        logger.info("Calling checkpoint listeners before saving checkpoint %d...", step)
        for listener in self._listeners:
            listener.before_save(session, step)
        self._write(session, step)
        logger.info("Calling checkpoint listeners after saving checkpoint %d...", step)
        should_stop = False
        for listener in self._listeners:
            if listener.after_save(session, step):
                _log_stop_request(listener)
                should_stop = True
        return should_stop

    async def _after_save(self, session: Any, step: int) -> bool:
        logger.info("Calling checkpoint listeners after saving checkpoint %d...", step)
        should_stop = False
        for listener in self._listeners:
            if await _call_listener(listener, "after_save", session, step):
                _log_stop_request(listener)
                should_stop = True
        return should_stop

    def _write(self, session: Any, step: int) -> None:
        """Write the checkpoint files and the CHECKPOINT event (on a thread)."""
        logger.info("Saving checkpoints for %d into %s.", step, self._save_path)
        self._get_saver(session.graph).save(
            session,
            self._save_path,
            global_step=step,
            write_meta_graph=self._save_graph_def,
        )
        self._summary_writer.add_session_log(
            SessionLog(status=SessionLog.CHECKPOINT, checkpoint_path=self._save_path),
            step,
        )

    async def _finish_write(self, session: Any) -> bool:
        """Wait for the background write, raise its error, then run after_save."""
        write = self._in_flight
        if write is None:
            return False
        try:
            await write.wait()
        finally:
            if write.done:
                self._in_flight = None
        return await self._after_save(session, write.step)

    async def _finish_write_quietly(self, session: Any) -> None:
        try:
            await self._finish_write(session)
        except Exception:
            logger.exception("A background checkpoint write failed")

    async def _save_final(self, exc: BaseException, session: Any) -> None:
        if session is None:
            logger.warning(
                "No final checkpoint after %s: the TF session was already closed.",
                type(exc).__name__,
            )
            return
        step = await self._read_step(session)
        if step != self._timer.last_triggered_step():
            self._timer.update_last_triggered_step(step)
            await self._save(session, step, background=False)
        logger.info(
            "Saved a final checkpoint at step %d as %s ends the session.",
            step,
            type(exc).__name__,
        )

    # -- graph and saver ---------------------------------------------------------

    def _write_graphs(self, session: Any) -> int:
        """Read the step; write graph.pbtxt and the (meta) graph events."""
        step = int(session.run(self._global_step_tensor))
        graph = session.graph
        if self._save_graph_def:
            # Written here, not in begin: other hooks may add ops in their begin.
            write_graph(
                graph.as_graph_def(add_shapes=True), self._checkpoint_dir, "graph.pbtxt"
            )
        saver = self._get_saver(graph)
        saver_def = saver.saver_def if saver else None
        self._summary_writer.add_graph(graph)
        self._summary_writer.add_meta_graph(meta_graph_def(graph, saver_def))
        return step

    def _get_saver(self, graph: Any) -> Any:
        if self._saver is not None:
            return self._saver
        if self._scaffold is not None:
            return self._scaffold.saver
        key = v1.GraphKeys.SAVERS
        savers = graph.get_collection(key)
        if not savers:
            raise RuntimeError(
                f"No items in collection {key}. Please add a saver to the collection "
                "or provide a saver or scaffold."
            )
        if len(savers) > 1:
            raise RuntimeError(
                f"More than one item in collection {key}. Please indicate which one "
                "to use by passing it to the constructor."
            )
        self._saver = savers[0]
        return self._saver

    def _plan(self, graph: Any) -> ShadowSnapshot | list[Any] | None:
        """How background writes snapshot the variables, decided once.

        Shadow variables copied inside TensorFlow when the saver allows it (the
        graph is briefly un-finalized if the session already finalized it);
        else its save tensors fetched and fed back; else None: synchronous.
        """
        saver = self._get_saver(graph)
        if graph.finalized:
            unfinalize_graph(graph)
            try:
                plan: ShadowSnapshot | list[Any] | None = shadow_snapshot(saver, graph)
            finally:
                graph.finalize()
        else:
            plan = shadow_snapshot(saver, graph)
        if plan is None:
            plan = snapshot_tensors(saver, graph)
        if plan is None:
            logger.warning(
                "background_write needs a V2-format tf.compat.v1.train.Saver; "
                "checkpoints for %s are written synchronously.",
                self._save_path,
            )
        self._snapshot = plan
        return plan


def remove_stale_temp_dirs(save_path: str) -> list[str]:
    """Remove the ``<save_path>-N_temp`` folders killed checkpoint writes left.

    TensorFlow's Saver writes a checkpoint's shards there and renames them into
    place when done, so a process killed mid-write leaves one behind, up to
    the model's size each. TensorFlow's saver.py says such an orphan "can be
    safely removed" on a later restore; the hook does it when its session
    begins, before it writes anything. Remote paths (``gs://``) are left alone.
    """
    directory, base = os.path.split(save_path)
    if "://" in save_path or not os.path.isdir(directory or "."):
        return []
    pattern = re.compile(re.escape(base) + r"-\d+_temp")
    removed = []
    for entry in os.scandir(directory or "."):
        if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    if removed:
        logger.info(
            "Removed %d temporary checkpoint folder(s) left by interrupted writes: %s",
            len(removed),
            ", ".join(sorted(removed)),
        )
    return removed


def _log_stop_request(listener: Any) -> None:
    logger.info(
        "A CheckpointSaverListener requested that training be stopped. listener: %r",
        listener,
    )
