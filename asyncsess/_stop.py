"""Why a session stopped: a small record readable as ``sess.stop_reason``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from ._tf import SessionRunContext


@dataclass(frozen=True, slots=True)
class StopReason:
    """Why `MonitoredSession.should_stop()` became True.

    ``kind`` is one of ``"hook"`` (a hook called ``run_context.request_stop()``),
    ``"user"`` (`MonitoredSession.request_stop`), ``"step_fn"``
    (``step_context.request_stop()``), ``"end_of_input"`` (``OutOfRangeError`` or
    ``StopIteration`` ended the session), ``"coordinator"`` (a queue runner or a
    hook stopped the coordinator), ``"error"``, ``"cancelled"`` or ``"closed"``.
    ``source`` names the hook or exception when there is one.
    """

    kind: str
    detail: str
    source: str | None = None

    def __str__(self) -> str:
        return self.detail


class RunContext(SessionRunContext):  # type: ignore[misc]
    """TensorFlow's SessionRunContext, remembering which hook asked to stop."""

    stopped_by: Any = None

    def request_stop(self) -> None:
        if self.stopped_by is None:
            caller = sys._getframe(1).f_locals.get("self")
            self.stopped_by = caller if caller is not None else "a hook"
        super().request_stop()
