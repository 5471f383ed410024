"""Exception helpers for the public boundary: one error keeps its own type."""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

_FINALIZED = "Graph is finalized and cannot be modified."


def collapse(exc: BaseException) -> BaseException:
    """Unwrap exception groups that hold a single exception (Starlette's helper)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def tag_source(exc: BaseException, source: str) -> None:
    """Remember which hook method raised *exc*, for the logs at exit."""
    if getattr(exc, "__asyncsess_source__", None) is None:
        try:
            exc.__asyncsess_source__ = source  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions with __slots__
            pass


def source_of(exc: BaseException) -> str | None:
    """The hook method that raised *exc*, or None if it came from elsewhere."""
    source: Any = getattr(exc, "__asyncsess_source__", None)
    return source if isinstance(source, str) else None


def explain_finalized(exc: BaseException, who: str) -> BaseException:
    """Return a clearer RuntimeError for TF's 'Graph is finalized' error, else *exc*."""
    if isinstance(exc, RuntimeError) and str(exc).startswith(_FINALIZED):
        return RuntimeError(
            f"{_FINALIZED} {who} tried to add an op after the session opened; "
            "ops belong in a hook's begin() or in the graph before the session opens."
        )
    return exc
