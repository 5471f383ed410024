"""The standard hooks, async, with TensorFlow's constructor arguments and files.

- `CheckpointSaverHook`, `CheckpointSaverListener`: save checkpoints.
- `SummarySaverHook`: write summaries.
- `StepCounterHook`: log and record steps per second.
- `StopAtStepHook`: stop at a step.
- `NanTensorHook`, `NanLossDuringTrainingError`: stop or fail on a NaN loss.
- `LoggingTensorHook`: log tensors.
- `FinalOpsHook`: run ops at the end.
- `FeedFnHook`: feed from a plain or async function.
- `GlobalStepWaiterHook`: wait (asynchronously) for a global step.
- `ProfilerHook`: write Chrome-trace timelines.
- `ProgressBarHook`: a live progress bar (log lines off a terminal): step, tensors,
  steps/s, ETA.
"""

from __future__ import annotations

from ._checkpoint_saver import CheckpointSaverHook as CheckpointSaverHook
from ._checkpoint_saver import CheckpointSaverListener as CheckpointSaverListener
from ._feed_fn import FeedFnHook as FeedFnHook
from ._final_ops import FinalOpsHook as FinalOpsHook
from ._global_step_waiter import GlobalStepWaiterHook as GlobalStepWaiterHook
from ._logging_tensor import LoggingTensorHook as LoggingTensorHook
from ._nan_tensor import NanLossDuringTrainingError as NanLossDuringTrainingError
from ._nan_tensor import NanTensorHook as NanTensorHook
from ._profiler import ProfilerHook as ProfilerHook
from ._progress import ProgressBarHook as ProgressBarHook
from ._step_counter import StepCounterHook as StepCounterHook
from ._stop_at_step import StopAtStepHook as StopAtStepHook
from ._summary_saver import SummarySaverHook as SummarySaverHook

__all__: tuple[str, ...] = (
    "CheckpointSaverHook",
    "CheckpointSaverListener",
    "FeedFnHook",
    "FinalOpsHook",
    "GlobalStepWaiterHook",
    "LoggingTensorHook",
    "NanLossDuringTrainingError",
    "NanTensorHook",
    "ProfilerHook",
    "ProgressBarHook",
    "StepCounterHook",
    "StopAtStepHook",
    "SummarySaverHook",
)


# Our hooks read as asyncsess.hooks.X; TensorFlow's own classes keep their module.
def _fix_modules() -> None:
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("asyncsess.hooks."):
            obj.__module__ = __name__


_fix_modules()
