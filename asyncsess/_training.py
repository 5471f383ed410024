"""MonitoredTrainingSession: a MonitoredSession with TF's default training hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ._creators import ChiefSessionCreator, WorkerSessionCreator
from ._session import MonitoredSession
from ._tf import Scaffold
from .hooks import CheckpointSaverHook, StepCounterHook, SummarySaverHook

if TYPE_CHECKING:
    from collections.abc import Iterable

    # TensorFlow's class from its defining module (the object `asyncsess._tf`
    # holds): type checkers cannot see through the lazy ``tf.compat.v1``.
    from tensorflow.python.training.monitored_session import Scaffold as TFScaffold
    from tensorflow.python.training.session_run_hook import (
        SessionRunHook as TFHook,
    )

    from ._hook import SessionRunHook
    from ._recovery import RecoveryPolicy


class _UseDefault:
    """The type of `USE_DEFAULT`."""

    _instance: _UseDefault | None = None

    def __new__(cls) -> _UseDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "USE_DEFAULT"


#: Marks an argument of `MonitoredTrainingSession` left to TensorFlow's default.
USE_DEFAULT: Final[Any] = _UseDefault()


def _every(
    secs: Any, steps: Any, names: tuple[str, str], default_secs: Any, default_steps: Any
) -> tuple[Any, Any]:
    """TF's defaulting of a secs/steps pair, refusing both (TF fails in the hook)."""
    if secs is USE_DEFAULT and steps is USE_DEFAULT:
        return default_secs, default_steps
    secs = None if secs is USE_DEFAULT else secs
    steps = None if steps is USE_DEFAULT else steps
    if secs is not None and steps is not None:
        raise ValueError(
            f"Can not provide both {names[0]} and {names[1]}; give one of them (the "
            f"other defaults to None). Received: {names[0]}={secs!r}, "
            f"{names[1]}={steps!r}"
        )
    return secs, steps


def MonitoredTrainingSession(  # TensorFlow's (function) name
    master: str = "",
    is_chief: bool = True,
    checkpoint_dir: str | None = None,
    scaffold: TFScaffold | None = None,
    hooks: Iterable[SessionRunHook | TFHook] | None = None,
    chief_only_hooks: Iterable[SessionRunHook | TFHook] | None = None,
    save_checkpoint_secs: float | None = USE_DEFAULT,
    save_summaries_steps: int | None = USE_DEFAULT,
    save_summaries_secs: float | None = USE_DEFAULT,
    config: Any = None,
    stop_grace_period_secs: float = 120,
    log_step_count_steps: int | None = 100,
    max_wait_secs: float = 7200,
    save_checkpoint_steps: int | None = USE_DEFAULT,
    summary_dir: str | None = None,
    save_graph_def: bool = True,
    *,
    recovery: RecoveryPolicy | None = None,
    step_cancel_grace: float = 0.25,
    caller_thread_below: float = 1e-3,
) -> MonitoredSession:
    """An unopened `MonitoredSession` set up for training, like TensorFlow's.

    Same arguments, defaults and hooks as
    `tf.compat.v1.train.MonitoredTrainingSession`, with asyncsess's hooks. On the
    chief: a `ChiefSessionCreator` restoring from ``checkpoint_dir``, then hooks
    in TensorFlow's order: ``chief_only_hooks``, a `StepCounterHook` (every
    ``log_step_count_steps``), a `SummarySaverHook` (every 100 steps by default)
    and a `CheckpointSaverHook` (every 600 seconds by default; 0 turns it off),
    then ``hooks``. Summaries go to ``summary_dir``, which defaults to
    ``checkpoint_dir``. Elsewhere: a `WorkerSessionCreator` waiting up to
    ``max_wait_secs`` and only ``hooks``. Use it as ``async with
    asyncsess.MonitoredTrainingSession(...) as sess:``.

    ``recovery``, ``step_cancel_grace`` and ``caller_thread_below`` (keywords
    only) are the returned session's options of the same names.

    Raises:
      ValueError: both ``save_checkpoint_secs`` and ``save_checkpoint_steps``,
        or both ``save_summaries_secs`` and ``save_summaries_steps``, are given.

    Cancellation: calling it does no work; see `MonitoredSession`.
    """
    checkpoint_secs, checkpoint_steps = _every(
        save_checkpoint_secs,
        save_checkpoint_steps,
        ("save_checkpoint_secs", "save_checkpoint_steps"),
        600,
        None,
    )
    summaries_secs, summaries_steps = _every(
        save_summaries_secs,
        save_summaries_steps,
        ("save_summaries_secs", "save_summaries_steps"),
        None,
        100,
    )
    options: dict[str, Any] = {
        "stop_grace_period_secs": stop_grace_period_secs,
        "recovery": recovery,
        "step_cancel_grace": step_cancel_grace,
        "caller_thread_below": caller_thread_below,
    }
    scaffold = scaffold or Scaffold()
    if not is_chief:
        worker = WorkerSessionCreator(
            scaffold=scaffold, master=master, config=config, max_wait_secs=max_wait_secs
        )
        return MonitoredSession(worker, list(hooks or []), **options)
    all_hooks: list[Any] = list(chief_only_hooks or [])
    all_hooks += _summary_hooks(
        summary_dir or checkpoint_dir,
        scaffold,
        log_step_count_steps,
        (summaries_secs, summaries_steps),
    )
    if checkpoint_dir and _enabled(checkpoint_secs, checkpoint_steps):
        all_hooks.append(
            CheckpointSaverHook(
                checkpoint_dir,
                save_steps=checkpoint_steps,
                save_secs=checkpoint_secs,
                scaffold=scaffold,
                save_graph_def=save_graph_def,
            )
        )
    all_hooks.extend(hooks or [])
    creator = ChiefSessionCreator(
        scaffold=scaffold, checkpoint_dir=checkpoint_dir, master=master, config=config
    )
    return MonitoredSession(creator, all_hooks, **options)


def _enabled(secs: Any, steps: Any) -> bool:
    return bool((secs and secs > 0) or (steps and steps > 0))


def _summary_hooks(
    summary_dir: str | None,
    scaffold: Any,
    log_step_count_steps: int | None,
    every: tuple[Any, Any],
) -> list[Any]:
    """The chief's StepCounterHook and SummarySaverHook, in TensorFlow's order."""
    if not summary_dir:
        return []
    hooks: list[Any] = []
    if log_step_count_steps and log_step_count_steps > 0:
        hooks.append(
            StepCounterHook(output_dir=summary_dir, every_n_steps=log_step_count_steps)
        )
    secs, steps = every
    if _enabled(secs, steps):
        hooks.append(
            SummarySaverHook(
                scaffold=scaffold,
                save_steps=steps,
                save_secs=secs,
                output_dir=summary_dir,
            )
        )
    return hooks
