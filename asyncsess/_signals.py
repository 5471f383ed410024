"""Graceful stop on SIGINT/SIGTERM: `stop_on_signals` turns them into request_stop()."""

from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol

import anyio

from ._exceptions import collapse

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from anyio.abc import TaskStatus

logger = logging.getLogger("asyncsess")

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stoppable(Protocol):
    """Anything with a plain ``request_stop()``: a `MonitoredSession`, a service."""

    def request_stop(self) -> None: ...


class SignalStop:
    """What `stop_on_signals` yields: which signal, if any, requested the stop."""

    __slots__ = ("received",)

    def __init__(self) -> None:
        #: The first signal received (a `signal.Signals`), or None.
        self.received: signal.Signals | None = None

    def __repr__(self) -> str:
        name = None if self.received is None else self.received.name
        return f"SignalStop(received={name})"


@asynccontextmanager
async def stop_on_signals(
    target: Stoppable, signals: Iterable[int] = DEFAULT_SIGNALS
) -> AsyncIterator[SignalStop]:
    """Turn the first SIGINT/SIGTERM into ``target.request_stop()``, for a clean exit.

    The training loop sees ``should_stop()`` become True after the current step,
    leaves the session's ``async with`` block normally, the hooks' ``end`` runs
    (a `CheckpointSaverHook` writes its final checkpoint) and the program can exit
    with status 0::

        session = asyncsess.MonitoredTrainingSession(checkpoint_dir=...)
        async with asyncsess.stop_on_signals(session) as stop, session as sess:
            while not sess.should_stop():
                await sess.run(train_op)
        if stop.received: ...  # the signal that stopped it, or None

    Entering it before the session (as above) makes a signal that arrives while
    the session opens or ends a stop request too. A second signal during the
    block has the signal's default effect: the process is terminated at once,
    without a final checkpoint (status 130 for SIGINT, 143 for SIGTERM in a
    shell), so a user can always stop a program stuck in a step. Works on asyncio
    and trio, in the main thread (where Python delivers signals), on platforms
    where `anyio.open_signal_receiver` does (not asyncio on Windows).

    Args:
      target: What to stop: anything with a plain ``request_stop()`` method, such
        as a `MonitoredSession` (opened or not).
      signals: The signals to catch; SIGINT and SIGTERM by default.

    Yields:
      A `SignalStop` whose ``received`` is the signal that requested the stop, or
      None.

    Cancellation: entering always yields; the signal watcher is a task of its own
    and is cancelled when the block ends. Cancelling the block does not stop
    *target*. Exceptions from the block propagate with their own type.
    """
    wanted = tuple(signal.Signals(s) for s in signals)
    stop = SignalStop()
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(_watch, target, wanted, stop)
            try:
                yield stop
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Our task group wraps the block's own exception; it alone is the error.
        error = collapse(group)
    if error is not None:
        raise error


async def _watch(
    target: Stoppable,
    signals: tuple[signal.Signals, ...],
    stop: SignalStop,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Request a stop on the first signal; stop the hard way on the next."""
    with anyio.open_signal_receiver(*signals) as received:
        task_status.started()
        async for signum in received:
            if stop.received is not None:
                _die(signal.Signals(signum))
            stop.received = signal.Signals(signum)
            logger.warning(
                "Received %s: stopping after the current step; send it again to "
                "stop at once (no final checkpoint).",
                stop.received.name,
            )
            target.request_stop()


def _die(signum: signal.Signals) -> None:
    """The signal's default action (terminate the process), as if never caught.

    Not KeyboardInterrupt: raised into an event loop, it can be swallowed or leave
    the interpreter waiting for worker threads at exit, and this must always stop
    (tests/test_signals.py::test_a_second_signal_stops_the_demo_at_once).
    """
    logger.warning("Received %s again: stopping at once.", signum.name)
    for handler in logging.getLogger("asyncsess").handlers:
        handler.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
