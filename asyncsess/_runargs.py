"""Pure functions merging the caller's and the hooks' run arguments, as TensorFlow does.

No event loop, no session: the rules of `_HookedSession.run` and
`_call_hook_before_run` (monitored_session.py) in a form the dispatcher calls once
per step and the tests call directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._hook import describe, hook_name
from ._tf import RunMetadata, RunOptions, Session, SessionRunArgs, tf

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


@dataclass(frozen=True, slots=True)
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
        raise RuntimeError(f"{message} Conflict(s): {conflicts!s} ({who}).")


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


# -- a faster Session.run for repeated fetches ----------------------------------------

#: Fetch leaves a cached callable may key by identity: immutable graph objects
#: (and names, keyed by value). Anything else is run through `Session.run`.
_LEAVES = (tf.Tensor, tf.Operation, tf.SparseTensor, tf.IndexedSlices, tf.Variable)


def fetch_key(fetches: Any) -> Any:
    """A hashable key naming *fetches*' structure and leaves, or None to not cache.

    Containers are keyed by type and content (so a list rebuilt each step hits
    and a list mutated in place misses); graph elements by identity, names by
    value. Only structures `Session.run` maps deterministically are keyed.
    """
    kind = type(fetches)
    if (
        kind is list
        or kind is tuple
        or (
            isinstance(fetches, tuple) and hasattr(kind, "_fields")  # a namedtuple
        )
    ):
        keys = []
        for item in fetches:
            key = fetch_key(item)
            if key is None:
                return None
            keys.append(key)
        return (kind, *keys)
    if kind is dict:
        items: list[Any] = [kind]
        for name, item in fetches.items():
            key = fetch_key(item)
            if key is None:
                return None
            items += (type(name), name, key)
        return tuple(items)
    if kind is str:
        return fetches
    if isinstance(fetches, _LEAVES):
        return id(fetches)
    return None


def _leaves(fetches: Any) -> list[Any]:
    """Every leaf of *fetches* (keeping them alive keeps their ids unique)."""
    if isinstance(fetches, (list, tuple)):
        return [leaf for item in fetches for leaf in _leaves(item)]
    if isinstance(fetches, dict):
        return [leaf for item in fetches.values() for leaf in _leaves(item)]
    return [fetches]


def _callables_allowed(sess: Any) -> bool:
    """Whether *sess* is a plain TF session whose run() we may shortcut."""
    kind = type(sess)
    return (
        isinstance(sess, Session)
        and kind.run is Session.run
        and kind.make_callable is Session.make_callable
        and callable(getattr(sess, "_do_call", None))
    )


class RunCache:
    """`Session.run` with its per-call Python work done once per fetch structure.

    ``Session.run`` rebuilds its fetch handler on every call, which costs more
    than a trivial device step. When nothing is fed and no ``RunOptions`` or
    ``RunMetadata`` are given, a `Session.make_callable` built on the first call
    with a fetch structure is reused, called through the session's own error
    translation, so results and errors are those of ``Session.run``. Everything
    else goes to ``Session.run``. One cache per TF session; worker thread only.
    """

    __slots__ = ("_allowed", "_callables", "_sess")

    #: Fetch structures kept per session; past that the cache starts over.
    max_entries = 64

    def __init__(self) -> None:
        self._sess: Any = None
        self._allowed = False
        self._callables: dict[Any, tuple[Any, list[Any]]] = {}

    def run(
        self,
        sess: Any,
        fetches: Any,
        feed_dict: Any = None,
        options: Any = None,
        run_metadata: Any = None,
    ) -> Any:
        """``sess.run(fetches, feed_dict, options, run_metadata)``, faster if it can."""
        if sess is not self._sess:
            self._sess, self._callables = sess, {}
            self._allowed = _callables_allowed(sess)
        if (
            feed_dict
            or options is not None
            or run_metadata is not None
            or not self._allowed
            or sess._closed
        ):
            return sess.run(fetches, feed_dict, options, run_metadata)
        key = fetch_key(fetches)
        entry = self._callables.get(key) if key is not None else None
        if entry is None:
            if key is None or not _leaves(fetches):
                return sess.run(fetches)
            try:
                fn = sess.make_callable(fetches)
            except Exception:  # Session.run raises it with TF's exact wording
                return sess.run(fetches)
            if len(self._callables) >= self.max_entries:
                self._callables.clear()
            entry = self._callables[key] = (fn, _leaves(fetches))
        return sess._do_call(entry[0])
