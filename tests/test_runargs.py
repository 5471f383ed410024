"""The merge rules of run arguments, without an event loop or a session."""

from __future__ import annotations

from typing import Any

import pytest
import tensorflow as tf

from asyncsess import SessionRunArgs
from asyncsess._runargs import merge

v1 = tf.compat.v1


class Hook:
    def __repr__(self) -> str:
        return "Hook()"


def _options(**fields: Any) -> Any:
    options = v1.RunOptions(**fields)
    return options


class TestMerge:
    def test_no_hook_requests_pass_arguments_through(self) -> None:
        feed = {"x:0": 1}
        merged = merge("f", feed, None, None, [Hook()], [None])
        assert merged.fetches == "f"
        assert merged.feed_dict is feed
        assert merged.options is None
        assert merged.run_metadata is None
        assert not merged.wrapped

    def test_fetches_per_hook_in_order(self) -> None:
        hooks = [Hook(), Hook(), Hook()]
        requests = [SessionRunArgs("a"), None, SessionRunArgs(["b"])]
        merged = merge({"c": 1}, None, None, None, hooks, requests)
        assert merged.fetches == [{"c": 1}, "a", ["b"]]
        assert merged.slots == (1, None, 2)
        assert merged.wrapped

    def test_hook_feeds_and_user_feeds(self) -> None:
        user = {"x:0": 1}
        merged = merge(
            "f", user, None, None, [Hook()], [SessionRunArgs(None, {"y:0": 2})]
        )
        assert merged.feed_dict == {"x:0": 1, "y:0": 2}
        assert user == {"x:0": 1}

    def test_only_hooks_feed(self) -> None:
        merged = merge(
            "f", None, None, None, [Hook()], [SessionRunArgs(None, {"y": 2})]
        )
        assert merged.feed_dict == {"y": 2}

    def test_two_hooks_conflict(self) -> None:
        requests = [SessionRunArgs(None, {"y:0": 1}), SessionRunArgs(None, {"y": 2})]
        with pytest.raises(RuntimeError, match=r"Same tensor is fed by two hooks\."):
            merge("f", None, None, None, [Hook(), Hook()], requests)

    def test_hook_and_user_conflict(self) -> None:
        with pytest.raises(
            RuntimeError, match=r"Same tensor is fed by a SessionRunHook and user\."
        ):
            merge(
                "f", {"x": 1}, None, None, [Hook()], [SessionRunArgs(None, {"x:0": 2})]
            )

    def test_wrong_request_type_names_the_hook(self) -> None:
        with pytest.raises(
            TypeError, match=r"Hook Hook \(Hook\(\)\) returned \('a',\)"
        ):
            merge("f", None, None, None, [Hook()], [("a",)])


class TestRunOptions:
    def test_merge_run_options_from_hooks(self) -> None:
        # TensorFlow's test_merge_run_options_from_hooks.
        opts1 = v1.RunOptions(
            trace_level=v1.RunOptions.NO_TRACE,
            timeout_in_ms=30000,
            output_partition_graphs=False,
        )
        opts1.debug_options.debug_tensor_watch_opts.add(node_name="a")
        opts2 = v1.RunOptions(
            trace_level=v1.RunOptions.FULL_TRACE,
            timeout_in_ms=20000,
            output_partition_graphs=True,
        )
        opts2.debug_options.debug_tensor_watch_opts.add(node_name="b")
        requests = [
            SessionRunArgs(None, options=opts1),
            SessionRunArgs(None, options=opts2),
        ]
        merged = merge("f", None, None, None, [Hook(), Hook()], requests)
        options = merged.options
        assert options.trace_level == v1.RunOptions.FULL_TRACE
        assert options.timeout_in_ms == 30000
        assert options.output_partition_graphs
        watches = options.debug_options.debug_tensor_watch_opts
        assert [w.node_name for w in watches] == ["a", "b"]
        assert isinstance(merged.run_metadata, v1.RunMetadata)

    def test_caller_options_are_not_mutated(self) -> None:
        caller = v1.RunOptions(
            timeout_in_ms=5, report_tensor_allocations_upon_oom=False
        )
        hook = v1.RunOptions(timeout_in_ms=50, report_tensor_allocations_upon_oom=True)
        merged = merge(
            "f", None, caller, None, [Hook()], [SessionRunArgs(None, options=hook)]
        )
        assert merged.options.timeout_in_ms == 50
        assert merged.options.report_tensor_allocations_upon_oom
        assert caller.timeout_in_ms == 5
        assert not caller.report_tensor_allocations_upon_oom
