"""`Session.run` for one session's steps: cached step plans, caller-thread execution.

Two costs dwarf a trivial device step. ``Session.run`` rebuilds its fetch handler
and looks up its feeds on every call, and TensorFlow runs a step's ops on its
inter-op thread pool, so even a one-op step hops from the calling thread to a pool
thread and back. The first is cured by doing once per step signature (fetch
structure and feed keys) what `Session.make_callable` does: a step then only
converts its feed values, as ``Session.run`` would, and calls TF. For the second
TF offers ``RunOptions(inter_op_thread_pool=-1)``, which runs the step on the
calling thread (the session's worker thread here); config.proto says to use it
"ONLY for simple graphs, where the overhead of an additional context switch is
comparable with the overhead of Session::Run()". So each step signature of a
graph simple enough to give the same results that way (`safe_on_caller_thread`)
is measured both ways for a few steps, interleaved, and keeps the caller thread
only when it measured faster.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ._caller_thread import safe_on_caller_thread
from ._tf import (
    RunOptions,
    Session,
    feed_converter,
    fetch_plan,
    options_buffer,
    session_run,
    tf,
    tf_output,
)

#: Fetch leaves a cached callable may key by identity: immutable graph objects
#: (and names, keyed by value). Anything else is run through `Session.run`.
_LEAVES = (tf.Tensor, tf.Operation, tf.SparseTensor, tf.IndexedSlices, tf.Variable)

#: Feed keys a step plan may key by identity (and names, keyed by value).
_FEED_KEYS = (tf.Tensor, tf.SparseTensor)

#: Runs the step's ops on the calling thread instead of the inter-op pool.
CALLER_THREAD = RunOptions(inter_op_thread_pool=-1)
#: The same, serialized once for TF_SessionRun.
CALLER_THREAD_BUFFER = options_buffer(CALLER_THREAD)


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


def feed_key(feed_dict: Any) -> Any:
    """A hashable key naming *feed_dict*'s keys (tensors or names), or None."""
    if type(feed_dict) is not dict:
        return None
    keys: list[Any] = [dict]
    for key in feed_dict:
        if type(key) is str:
            keys.append(key)
        elif isinstance(key, _FEED_KEYS):
            keys.append(id(key))
        else:
            return None
    return tuple(keys)


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
        and callable(getattr(sess, "_call_tf_sessionrun", None))
    )


class _Plan:
    """One step signature's TF_SessionRun arguments, built once.

    Per step, only the feed values are converted, by the rules and checks of
    ``Session.run``; a value that fails any of them sends the step to
    ``Session.run``, which raises TF's own error.
    """

    __slots__ = ("feeds", "fetch_list", "handler", "target_list")

    def __init__(self, sess: Any, fetches: Any, feeds: list[list[Any]]) -> None:
        self.handler, self.fetch_list, self.target_list = fetch_plan(sess, fetches)
        graph = sess.graph
        #: Per feed key, in feed_dict order: (output, converter) per fed tensor
        #: (three for a SparseTensor: indices, values, dense_shape).
        self.feeds = [
            [(tf_output(t), feed_converter(graph, t)) for t in tensors]
            for tensors in feeds
        ]

    def run(self, sess: Any, values: Any, options: Any) -> Any:
        """The step with the feed *values* (feed_dict.values()), or `NotImplemented`.

        `NotImplemented` means ``Session.run`` must run it: a value it would
        reject or take some other way.
        """
        feeds = {}
        for parts, value in zip(self.feeds, values, strict=True):
            if len(parts) == 1:
                output, convert = parts[0]
                array = convert(value)
                if array is None:
                    return NotImplemented
                feeds[output] = array
            elif not self._split(parts, value, feeds):
                return NotImplemented
        results = session_run(sess, options, feeds, self.fetch_list, self.target_list)
        return self.handler.build_results(sess, results)

    @staticmethod
    def _split(parts: list[Any], value: Any, feeds: dict[Any, Any]) -> bool:
        """Feed a SparseTensorValue (or 3-tuple) *value* to a SparseTensor's parts."""
        if not isinstance(value, tuple) or len(value) != len(parts):
            return False
        for (output, convert), item in zip(parts, value, strict=True):
            array = convert(item)
            if array is None:
                return False
            feeds[output] = array
        return True


def _fed_tensors(graph: Any, feed_dict: Any) -> list[list[Any]] | None:
    """The tensors each key of *feed_dict* feeds, or None where TF must decide.

    None for a key that names no feedable tensor of *graph* (``Session.run``
    raises), or for two keys feeding one tensor.
    """
    out, seen = [], set()
    for key in feed_dict:
        parts = (
            [key.indices, key.values, key.dense_shape]
            if isinstance(key, tf.SparseTensor)
            else [key]
        )
        try:
            tensors = [
                graph.as_graph_element(p, allow_tensor=True, allow_operation=False)
                for p in parts
            ]
        except Exception:
            return None
        for t in tensors:
            if t.ref() in seen:
                return None
            seen.add(t.ref())
        out.append(tensors)
    return out


def _plan(sess: Any, fetches: Any, feeds: list[list[Any]]) -> _Plan | None:
    """A plan for the step, or None where ``Session.run`` must run it.

    None for a fetch that is also fed: ``Session.run`` returns the fed value
    itself. Raises what building the plan raised (TF's errors for bad fetches).
    """
    plan = _Plan(sess, fetches, feeds)
    fed = {t.ref() for tensors in feeds for t in tensors}
    if any(t.ref() in fed for t in plan.handler.fetches()):
        return None
    return plan


class _Signature:
    """One fetch structure (and feed keys): how it runs and what it measured."""

    __slots__ = (
        "feeds", "inline", "keys", "leaves", "plan", "pool_s", "thread_s", "warm",
    )  # fmt: skip

    def __init__(
        self, plan: _Plan | None, leaves: list[Any], keys: list[Any], feeds: list[Any]
    ) -> None:
        #: How the step runs; None when Session.run runs it.
        self.plan = plan
        #: The fetched and feed-key objects (keeping them alive keeps ids unique).
        self.leaves = leaves
        self.keys = keys
        #: The fed tensors (they cut the graph for safe_on_caller_thread).
        self.feeds = feeds
        #: None while measuring; then whether the caller thread runs the step.
        self.inline: bool | None = None
        self.warm = 0
        self.pool_s: list[float] = []
        self.thread_s: list[float] = []


class RunCache:
    """``sess.run(...)`` with its per-call work done once per step signature.

    When no ``RunOptions`` or ``RunMetadata`` are given, a step runs through a
    plan built on its first call (what `Session.make_callable` builds, plus the
    fed tensors), and a step of a local session with a simple graph may run on
    the calling thread (see the module docstring): `probe_below` bounds the
    steps that try, 0 turns it off. Results and errors are those of
    ``Session.run``: a feed value it would reject, or take other than as an
    array, is left to it. One cache per TF session; used on the session's
    worker thread only.
    """

    __slots__ = ("_allowed", "_local", "_sess", "_signatures", "clock", "probe_below")

    #: Step signatures kept per session; past that the cache starts over.
    max_entries = 64
    #: Steps run on the pool first (graph pruning and first-run costs).
    warmup = 3
    #: Timed steps per way before the choice (alternating pool, caller thread).
    probes = 12

    def __init__(self) -> None:
        self._sess: Any = None
        self._allowed = False
        self._local = False
        self._signatures: dict[Any, _Signature] = {}
        #: Steps measured slower than this on the pool never try the caller
        #: thread (their context switch is noise); 0 disables it.
        self.probe_below = 1e-3
        self.clock = time.perf_counter

    def configure(self, probe_below: float) -> None:
        """Set `probe_below`; every signature is measured (or not) afresh."""
        self.probe_below = probe_below
        self._sess = None  # the next run() starts a new table

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
            self._sess, self._signatures = sess, {}
            self._allowed = _callables_allowed(sess)
            self._local = self._allowed and not sess.sess_str
        if options is not None or run_metadata is not None or not self._allowed:
            return sess.run(fetches, feed_dict, options, run_metadata)
        signature = self._signature(sess, fetches, feed_dict)
        if signature is None:
            return sess.run(fetches, feed_dict)
        if signature.inline is None:
            return self._measure(sess, signature, fetches, feed_dict)
        return self._call(sess, signature, fetches, feed_dict, signature.inline)

    def _signature(self, sess: Any, fetches: Any, feed_dict: Any) -> _Signature | None:
        key = fetch_key(fetches)
        if key is not None and feed_dict:
            feeds = feed_key(feed_dict)
            key = None if feeds is None else (key, feeds)
        if key is None or sess._closed:
            return None
        signature = self._signatures.get(key)
        if signature is not None:
            return signature
        leaves = _leaves(fetches)
        tensors = _fed_tensors(sess.graph, feed_dict) if feed_dict else []
        if not leaves or tensors is None:
            return None
        try:
            plan = _plan(sess, fetches, tensors)
        except Exception:  # Session.run raises it with TF's exact wording
            return None
        if len(self._signatures) >= self.max_entries:
            self._signatures.clear()
        fed = [t for parts in tensors for t in parts]
        keys = list(feed_dict) if feed_dict else []
        signature = self._signatures[key] = _Signature(plan, leaves, keys, fed)
        if not self._local or self.probe_below <= 0:
            signature.inline = False
        return signature

    def _measure(
        self, sess: Any, signature: _Signature, fetches: Any, feed_dict: Any
    ) -> Any:
        """Run one step of a signature still being measured, and maybe decide."""
        if signature.warm < self.warmup:
            signature.warm += 1
            return self._call(sess, signature, fetches, feed_dict, False)
        inline = len(signature.thread_s) < len(signature.pool_s)
        if (
            inline
            and not signature.thread_s
            and not safe_on_caller_thread(sess.graph, signature.leaves, signature.feeds)
        ):
            signature.inline = False
            return self._call(sess, signature, fetches, feed_dict, False)
        start = self.clock()
        try:
            result = self._call(sess, signature, fetches, feed_dict, inline)
        except BaseException:
            if inline:  # whatever went wrong there, the pool is what TF does
                signature.inline = False
            raise
        elapsed = self.clock() - start
        (signature.thread_s if inline else signature.pool_s).append(elapsed)
        if not inline and statistics.median(signature.pool_s) > self.probe_below:
            signature.inline = False  # a context switch is noise next to this step
        elif len(signature.thread_s) >= self.probes:
            pool = statistics.median(signature.pool_s)
            signature.inline = statistics.median(signature.thread_s) < pool
        return result

    @staticmethod
    def _call(
        sess: Any, signature: _Signature, fetches: Any, feed_dict: Any, inline: bool
    ) -> Any:
        plan = signature.plan
        if plan is not None:
            values = feed_dict.values() if feed_dict else ()
            result = plan.run(sess, values, CALLER_THREAD_BUFFER if inline else None)
            if result is not NotImplemented:
                return result
        return sess.run(fetches, feed_dict, CALLER_THREAD if inline else None)
