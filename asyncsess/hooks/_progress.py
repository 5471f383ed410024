"""ProgressBarHook: a live progress bar (rich) on a terminal, log lines elsewhere."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from .._hook import SessionRunHook
from .._tf import SessionRunArgs, as_graph_element
from .._worker import run_in_session_thread
from ._checks import check_number, required_global_step
from ._rate import RateMeter

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._tf import SessionRunContext, SessionRunValues

logger = logging.getLogger("asyncsess.hooks.progress")

_STEP = "__asyncsess_progress_step__"
#: Seconds of history the steps/s figure is measured over.
RATE_WINDOW_SECS = 5.0


class ProgressBarHook(SessionRunHook):
    """Shows training progress: global step, tensor values, steps/s and ETA.

    On a terminal (when ``stream`` is a TTY and `rich` is installed) a live
    progress bar; otherwise plain INFO lines on the ``asyncsess.hooks.progress``
    logger, at most one per ``log_every_secs`` plus a last one at the end.
    The step shown is the global step each step reads, plus one, as TensorFlow's
    hooks count (build the model under that read, as Estimator does, to make it
    exact); the last update at the end reads the step exactly::

        hooks = [asyncsess.hooks.ProgressBarHook(last_step=1000,
                                                 tensors={"loss": loss})]

    Args:
      last_step: The global step training ends at (the bar's total and the ETA);
        None for an open-ended run.
      every_n_steps: Update the display once per this many global steps.
      tensors: Tensors (or tensor names) to show, as a ``{label: tensor}``
        mapping or a sequence labelled by tensor name. They are fetched with
        every step.
      stream: Where the bar is drawn; ``sys.stderr`` (when the session opens) by
        default.
      log_every_secs: Seconds between log lines when no bar is drawn; 0 logs
        every update.

    Raises:
      ValueError: for a negative ``last_step`` or ``log_every_secs`` or an
        ``every_n_steps`` below 1.

    Cancellation: ``before_run`` and ``after_run`` run inline (no await inside);
    ``end`` reads the exact final step on the session's worker thread and, even
    when cancelled there, closes the bar; when an error or a cancellation ends
    the session, ``on_error`` closes it.
    """

    def __init__(
        self,
        last_step: int | None = None,
        every_n_steps: int = 1,
        tensors: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        stream: TextIO | None = None,
        log_every_secs: float = 10.0,
    ) -> None:
        check_number(
            "every_n_steps", every_n_steps, what="an int", minimum=1, integral=True
        )
        if last_step is not None:
            check_number("last_step", last_step, what="an int", integral=True)
        check_number("log_every_secs", log_every_secs)
        self.last_step = last_step
        self.every_n_steps = every_n_steps
        self.log_every_secs = log_every_secs
        self._tensors = _labelled(tensors)
        self._stream = stream
        self._fetches: dict[str, Any] = {}
        self._display: _Display | None = None
        self._rate = RateMeter(RATE_WINDOW_SECS)
        self._shown_step: int | None = None
        self._latest: tuple[int, dict[str, Any]] | None = None

    async def begin(self) -> None:
        step = required_global_step("ProgressBarHook")
        self._fetches = {label: as_graph_element(t) for label, t in self._tensors}
        self._fetches[_STEP] = step

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs:
        return SessionRunArgs(self._fetches)

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        values = dict(run_values.results)
        # The read happens before this step's increment, as in TF's hooks.
        step = int(values.pop(_STEP)) + 1
        now = time.monotonic()
        self._rate.add(now, step)
        self._latest = (step, values)
        shown = self._shown_step
        if shown is not None and step - shown < self.every_n_steps:
            return
        self._shown_step = step
        self._show(step, values, final=False)

    async def end(self, session: Any) -> None:
        try:
            if self._latest is not None:
                # The last step read races with its increment: read it exactly.
                step = await run_in_session_thread(session.run, self._fetches[_STEP])
                self._latest = (int(step), self._latest[1])
        except Exception:  # a display must not fail the session's end
            logger.debug("Reading the final global step failed", exc_info=True)
        finally:
            self._close()

    async def on_error(self, exc: BaseException, session: Any) -> None:
        self._close()

    def _show(self, step: int, values: dict[str, Any], *, final: bool) -> None:
        if self._display is None:
            self._display = open_display(
                self._stream or sys.stderr, self.last_step, self.log_every_secs
            )
        rate = self._rate.per_sec()
        self._display.update(Progress(step, self.last_step, values, rate), final)

    def _close(self) -> None:
        if self._latest is not None and self._latest[0] != self._shown_step:
            self._show(*self._latest, final=True)
        elif self._latest is not None and isinstance(self._display, LogDisplay):
            self._display.flush()
        if self._display is not None:
            self._display.close()
        self._display = None


@dataclass(frozen=True, slots=True)
class Progress:
    """One update of the display, with its text pieces."""

    step: int
    last_step: int | None
    values: dict[str, Any]
    rate: float | None

    def metrics(self) -> str:
        return " ".join(f"{k}={format_value(v)}" for k, v in self.values.items())

    def rate_text(self) -> str:
        return "-- steps/s" if self.rate is None else f"{self.rate:.1f} steps/s"

    def eta_text(self) -> str:
        if self.last_step is None or not self.rate:
            return "ETA --"
        left = max(self.last_step - self.step, 0) / self.rate
        return f"ETA {_clock(left)}"

    def line(self) -> str:
        total = "" if self.last_step is None else f"/{self.last_step}"
        pct = ""
        if self.last_step:
            pct = f" ({min(self.step / self.last_step, 1.0):.0%})"
        parts = [f"step {self.step}{total}{pct}", self.metrics(), self.rate_text()]
        if self.last_step is not None:
            parts.append(self.eta_text())
        return " ".join(p for p in parts if p)


class _Display:
    def update(self, progress: Progress, final: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the display."""


class LogDisplay(_Display):
    """Plain INFO lines: the first update, then one per ``every_secs`` at most."""

    def __init__(self, every_secs: float) -> None:
        self._every = every_secs
        self._last_time: float | None = None
        self._pending: str | None = None

    def update(self, progress: Progress, final: bool) -> None:
        now = time.monotonic()
        line = progress.line()
        last = self._last_time
        if final or last is None or now - last >= self._every:
            self._last_time, self._pending = now, None
            logger.info("%s", line)
        else:
            self._pending = line

    def flush(self) -> None:
        """Log the last update if it was held back."""
        if self._pending is not None:
            logger.info("%s", self._pending)
            self._pending = None


class BarDisplay(_Display):
    """A rich live progress bar: step/total, tensor values, steps/s, ETA."""

    def __init__(self, stream: TextIO, last_step: int | None, rich: Any) -> None:
        columns = (
            rich.progress.TextColumn("[bold]train"),
            rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(),
            rich.progress.TextColumn("{task.fields[metrics]}"),
            rich.progress.TextColumn("{task.fields[rate]}"),
            rich.progress.TextColumn("{task.fields[eta]}"),
        )
        console = rich.console.Console(file=stream, force_terminal=True)
        self._bar = rich.progress.Progress(*columns, console=console)
        self._task = self._bar.add_task(
            "train", total=last_step, metrics="", rate="", eta=""
        )
        self._bar.start()

    def update(self, progress: Progress, final: bool) -> None:
        self._bar.update(
            self._task,
            completed=progress.step,
            metrics=progress.metrics(),
            rate=progress.rate_text(),
            eta=progress.eta_text() if progress.last_step is not None else "",
        )

    def close(self) -> None:
        self._bar.stop()


def open_display(stream: TextIO, last_step: int | None, every_secs: float) -> _Display:
    """A bar when *stream* is a terminal and rich is installed, else log lines."""
    if _isatty(stream):
        try:
            import rich.console
            import rich.progress
        except ImportError:
            logger.info("Install 'rich' for a live progress bar; logging progress.")
        else:
            return BarDisplay(stream, last_step, rich)
    return LogDisplay(every_secs)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def format_value(value: Any) -> str:
    """A short text for a fetched value: 4 significant digits for floats."""
    try:
        item = value.item() if getattr(value, "ndim", None) == 0 else value
    except (AttributeError, ValueError):
        item = value
    if isinstance(item, float):
        return f"{item:.4g}"
    text = str(item.tolist() if hasattr(item, "tolist") else item)
    return text if len(text) <= 40 else text[:37] + "..."


def _clock(secs: float) -> str:
    if not math.isfinite(secs):
        return "--"
    minutes, seconds = divmod(round(secs), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _labelled(
    tensors: Mapping[str, Any] | Sequence[Any] | None,
) -> list[tuple[str, Any]]:
    if tensors is None:
        return []
    if hasattr(tensors, "items"):
        return [(str(k), v) for k, v in tensors.items()]
    if isinstance(tensors, (str, bytes)):
        tensors = [tensors]
    return [(t if isinstance(t, str) else str(t.name), t) for t in tensors]
