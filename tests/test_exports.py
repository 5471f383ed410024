"""The public surface: what API.md names is exported, sorted, with public modules."""

from __future__ import annotations

import subprocess
import sys

import tensorflow as tf

import asyncsess

API_NAMES = {
    "BatchQueueFullError",
    "Batcher",
    "MonitoredSession",
    "SingularMonitoredSession",
    "MonitoredTrainingSession",
    "SessionCreator",
    "ChiefSessionCreator",
    "WorkerSessionCreator",
    "Scaffold",
    "SessionRunHook",
    "SessionRunArgs",
    "SessionRunContext",
    "SessionRunValues",
    "StepContext",
    "hooks",
}


def test_all_is_sorted_and_complete() -> None:
    assert list(asyncsess.__all__) == sorted(asyncsess.__all__)
    missing = API_NAMES - set(asyncsess.__all__)
    assert not missing
    for name in asyncsess.__all__:
        assert hasattr(asyncsess, name), name


def test_tf_classes_are_tensorflows_own() -> None:
    v1 = tf.compat.v1.train
    assert asyncsess.Scaffold is v1.Scaffold
    assert asyncsess.SessionRunArgs is v1.SessionRunArgs
    assert asyncsess.SessionRunContext is v1.SessionRunContext
    assert asyncsess.SessionRunValues is v1.SessionRunValues


def test_public_objects_have_public_modules() -> None:
    for name in asyncsess.__all__:
        obj = getattr(asyncsess, name)
        module = getattr(obj, "__module__", None)
        if module is None or name in {"hooks"}:
            continue
        if module.startswith("asyncsess"):
            assert module == "asyncsess", (name, module)


def test_hooks_all_is_sorted() -> None:
    names = list(asyncsess.hooks.__all__)
    assert names == sorted(names)
    for name in names:
        obj = getattr(asyncsess.hooks, name)
        module = getattr(obj, "__module__", "asyncsess.hooks")
        if module.startswith("tensorflow."):  # TF's own class, re-exported (#4)
            continue
        assert module == "asyncsess.hooks", name


def test_import_without_tensorflow_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "try:\n"
        "    import asyncsess\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'asyncsess[tensorflow-cpu]'" in out
