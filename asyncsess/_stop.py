"""Why a session stopped: a small record readable as ``sess.stop_reason``."""

from __future__ import annotations

import contextvars
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


#: The hook whose method is running in this task or thread (set by the
#: dispatcher around each hook call), so a stop request names its hook even when
#: it comes from a helper function or a listener the hook calls.
current_hook: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "asyncsess_current_hook", default=None
)


class RunContext(SessionRunContext):  # type: ignore[misc]
    """TensorFlow's SessionRunContext, remembering which hook asked to stop."""

    stopped_by: Any = None

    def request_stop(self) -> None:
        if self.stopped_by is None:
            hook = current_hook.get()
            self.stopped_by = hook if hook is not None else "a hook"
        super().request_stop()
