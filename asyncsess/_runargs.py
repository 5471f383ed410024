"""The merged-run layout: the caller's and the hooks' run arguments merged, as
TensorFlow does, and one step's outputs split back into the caller's results and
each hook's `SessionRunValues`.

No event loop, no session: the rules of `_HookedSession.run` and
`_call_hook_before_run` (monitored_session.py) in a form the step path calls once
per step and the tests call directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._exceptions import FeedConflictError
from ._hook import describe, hook_name
from ._tf import RunMetadata, RunOptions, SessionRunArgs, SessionRunValues

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


@dataclass(slots=True)  # not frozen: built every step, frozen init costs 2x
class MergedRun:
    """What one device step runs, and where each hook's results come back."""

    fetches: Any
    feed_dict: Any
    options: Any
    run_metadata: Any
    #: For each requesting hook (in hook order), the index of its fetches in the
    #: fetch list, or None when the hook fetched nothing.
    slots: tuple[int | None, ...]
    #: True when ``fetches`` is ``[caller_fetches, hook fetches...]``.
    wrapped: bool

    def split(self, outputs: Any, with_values: bool) -> StepOutcome:
        """The step's *outputs* split back: the caller's result, the hooks' values.

        *with_values*: some hook's after_run reads `SessionRunValues`, which carry
        a RunOptions and a RunMetadata even when the step had none, as in
        TensorFlow (built only then: most steps have no after_run).
        """
        options, run_metadata = self.options, self.run_metadata
        if with_values:
            options = RunOptions() if options is None else options
            run_metadata = RunMetadata() if run_metadata is None else run_metadata
        return StepOutcome(
            outputs[0] if self.wrapped else outputs,
            outputs,
            self.slots,
            options,
            run_metadata,
        )


@dataclass(slots=True)  # not frozen: built every step, frozen init costs 2x
class StepOutcome:
    """One device step's outputs, as the caller and the hooks' after_run see them."""

    #: What the caller's ``run()`` returns.
    result: Any
    outputs: Any
    slots: tuple[int | None, ...]
    options: Any
    run_metadata: Any

    def values_for(self, request_slot: int) -> Any:
        """The `SessionRunValues` of the hook at *request_slot* (-1: no request)."""
        index = self.slots[request_slot] if request_slot >= 0 else None
        return SessionRunValues(
            results=self.outputs[index] if index is not None else None,
            options=self.options,
            run_metadata=self.run_metadata,
        )


def check_request(hook: object, request: object, phase: str = "before_run") -> None:
    """Raise TypeError unless *request* is None or a `SessionRunArgs`."""
    if request is not None and not isinstance(request, SessionRunArgs):
        raise TypeError(
            f"Hook {hook_name(hook)} ({describe(hook)}) returned {describe(request)} "
            f"from {phase}(); expected None or SessionRunArgs."
        )


def _feed_name(key: Any) -> Any:
    name = getattr(key, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(key, str) and ":" not in key:
        return key + ":0"
    return key


def raise_if_feeds_intersect(
    feeds1: Mapping[Any, Any], feeds2: Mapping[Any, Any], message: str, who: str
) -> None:
    """TensorFlow's feed clash check, also catching ``'x:0'`` against tensor ``x``."""
    names1 = {_feed_name(k): k for k in feeds1}
    conflicts = [names1[n] for n in map(_feed_name, feeds2) if n in names1]
    if conflicts:
        raise FeedConflictError(f"{message} Conflict(s): {conflicts!s} ({who}).")


def merge_run_options(options: Any, incoming: Any) -> None:
    """Merge *incoming* RunOptions into *options* exactly as TensorFlow merges them."""
    options.trace_level = max(options.trace_level, incoming.trace_level)
    options.timeout_in_ms = max(options.timeout_in_ms, incoming.timeout_in_ms)
    options.inter_op_thread_pool = max(
        options.inter_op_thread_pool, incoming.inter_op_thread_pool
    )
    options.output_partition_graphs = max(
        options.output_partition_graphs, incoming.output_partition_graphs
    )
    options.debug_options.debug_tensor_watch_opts.extend(
        incoming.debug_options.debug_tensor_watch_opts
    )
    options.debug_options.reset_disk_byte_usage = (
        options.debug_options.reset_disk_byte_usage
        or incoming.debug_options.reset_disk_byte_usage
    )
    options.report_tensor_allocations_upon_oom = (
        options.report_tensor_allocations_upon_oom
        or incoming.report_tensor_allocations_upon_oom
    )


def merge(
    fetches: Any,
    feed_dict: Any,
    options: Any,
    run_metadata: Any,
    hooks: Sequence[object],
    requests: Sequence[Any],
) -> MergedRun:
    """Merge the caller's arguments with the hooks' requests, in hook order.

    The caller's ``feed_dict`` and ``options`` are never mutated. Feed clashes raise
    TensorFlow's RuntimeErrors, naming the hooks involved.
    """
    fetch_list: list[Any] = [fetches]
    slots: list[int | None] = []
    hook_feeds: dict[Any, Any] = {}
    feeders: list[str] = []
    merged_options = options
    for hook, request in zip(hooks, requests, strict=False):
        if request is None:
            slots.append(None)
            continue
        check_request(hook, request)
        if request.fetches is not None:
            slots.append(len(fetch_list))
            fetch_list.append(request.fetches)
        else:
            slots.append(None)
        if request.feed_dict:
            feeders.append(hook_name(hook))
            raise_if_feeds_intersect(
                hook_feeds,
                request.feed_dict,
                "Same tensor is fed by two hooks.",
                "fed by " + " and ".join(feeders),
            )
            hook_feeds.update(request.feed_dict)
        if request.options:
            if merged_options is options:
                merged_options = RunOptions()
                if options is not None:
                    merged_options.CopyFrom(options)
            merge_run_options(merged_options, request.options)
    feeds = _merge_feeds(feed_dict, hook_feeds, feeders)
    if merged_options is not None and run_metadata is None:
        run_metadata = RunMetadata()
    wrapped = len(fetch_list) > 1
    return MergedRun(
        fetches=fetch_list if wrapped else fetches,
        feed_dict=feeds,
        options=merged_options,
        run_metadata=run_metadata,
        slots=tuple(slots),
        wrapped=wrapped,
    )


def _merge_feeds(user: Any, hook_feeds: dict[Any, Any], feeders: list[str]) -> Any:
    if not hook_feeds:
        return user
    if not user:
        return hook_feeds
    raise_if_feeds_intersect(
        user,
        hook_feeds,
        "Same tensor is fed by a SessionRunHook and user.",
        "fed by the caller and by " + ", ".join(feeders),
    )
    hook_feeds.update(user)
    return hook_feeds
