"""asyncsess: an anyio-native (asyncio and trio) MonitoredSession for TensorFlow.

General layout: the public names are re-exported here from private modules, each
owning one thing (``_session`` the lifecycle and public methods, ``_stepper`` the
per-step path, ``_dispatch`` the hooks, ``_runargs`` the merged-run layout,
``_run_cache`` the device step, ``_worker`` the threads, ``_creators`` session
creation, ``_recovery`` the retry loop, ``_step_fn`` run_step_fn, ``_batcher``
dynamic batching, ``_exceptions`` the error types); ``asyncsess.hooks`` holds the
standard hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import hooks as hooks
from ._async_queue_runner import AsyncQueueRunner as AsyncQueueRunner
from ._batcher import Batcher as Batcher
from ._creators import ChiefSessionCreator as ChiefSessionCreator
from ._creators import SessionCreator as SessionCreator
from ._creators import WorkerSessionCreator as WorkerSessionCreator
from ._exceptions import BatchQueueFullError as BatchQueueFullError
from ._exceptions import FeedConflictError as FeedConflictError
from ._exceptions import RunAfterStopError as RunAfterStopError
from ._exceptions import SessionBrokenError as SessionBrokenError
from ._exceptions import SessionStateError as SessionStateError
from ._exceptions import WrongEventLoopError as WrongEventLoopError
from ._hook import SessionRunHook as SessionRunHook
from ._recovery import RecoveryPolicy as RecoveryPolicy
from ._serve_factory import ServeSpec as ServeSpec
from ._session import MonitoredSession as MonitoredSession
from ._session import SingularMonitoredSession as SingularMonitoredSession
from ._signals import stop_on_signals as stop_on_signals
from ._step_fn import StepContext as StepContext
from ._stop import StopReason as StopReason
from ._training import USE_DEFAULT as USE_DEFAULT
from ._training import MonitoredTrainingSession as MonitoredTrainingSession
from ._version import __version__ as __version__
from ._worker import run_in_session_thread as run_in_session_thread

if TYPE_CHECKING:
    # TensorFlow's classes from their defining modules, the same objects `._tf`
    # gives at runtime: type checkers cannot see through the lazy tf.compat.v1.
    from tensorflow.python.training.monitored_session import Scaffold as Scaffold
    from tensorflow.python.training.session_run_hook import (
        SessionRunArgs as SessionRunArgs,
    )
    from tensorflow.python.training.session_run_hook import (
        SessionRunContext as SessionRunContext,
    )
    from tensorflow.python.training.session_run_hook import (
        SessionRunValues as SessionRunValues,
    )
else:
    from ._tf import Scaffold as Scaffold
    from ._tf import SessionRunArgs as SessionRunArgs
    from ._tf import SessionRunContext as SessionRunContext
    from ._tf import SessionRunValues as SessionRunValues

__all__ = (
    "AsyncQueueRunner",
    "BatchQueueFullError",
    "Batcher",
    "ChiefSessionCreator",
    "FeedConflictError",
    "MonitoredSession",
    "MonitoredTrainingSession",
    "RecoveryPolicy",
    "RunAfterStopError",
    "Scaffold",
    "ServeSpec",
    "SessionBrokenError",
    "SessionCreator",
    "SessionRunArgs",
    "SessionRunContext",
    "SessionRunHook",
    "SessionRunValues",
    "SessionStateError",
    "SingularMonitoredSession",
    "StepContext",
    "StopReason",
    "USE_DEFAULT",
    "WorkerSessionCreator",
    "WrongEventLoopError",
    "hooks",
    "run_in_session_thread",
    "stop_on_signals",
)

# TensorFlow's own classes keep their module; ours read as public names.
for _name in __all__:
    _obj = globals()[_name]
    if _name == "hooks":
        continue
    if getattr(_obj, "__module__", "").startswith("asyncsess."):
        _obj.__module__ = __name__
del _name, _obj
