"""`Session.run` for one session's steps: cached callables, caller-thread execution.

Two costs dwarf a trivial device step. ``Session.run`` rebuilds its fetch handler
on every call, and TensorFlow runs a step's ops on its inter-op thread pool, so even
a one-op step hops from the calling thread to a pool thread and back. The first
is cured by a `Session.make_callable` per fetch structure. For the second TF offers
``RunOptions(inter_op_thread_pool=-1)``, which runs the step on the calling thread
(the session's worker thread here); config.proto says to use it "ONLY for simple
graphs, where the overhead of an additional context switch is comparable with the
overhead of Session::Run()". So each step signature of a graph simple enough to
give the same results that way (`safe_on_caller_thread`) is measured both ways
for a few steps, interleaved, and keeps the caller thread only when it measured
faster.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ._caller_thread import safe_on_caller_thread
from ._tf import RunOptions, Session, tf

#: Fetch leaves a cached callable may key by identity: immutable graph objects
#: (and names, keyed by value). Anything else is run through `Session.run`.
_LEAVES = (tf.Tensor, tf.Operation, tf.SparseTensor, tf.IndexedSlices, tf.Variable)

#: Runs the step's ops on the calling thread instead of the inter-op pool.
CALLER_THREAD = RunOptions(inter_op_thread_pool=-1)


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
        elif isinstance(key, tf.Tensor):
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
    )


class _Signature:
    """One fetch structure (and feed keys): how it runs and what it measured."""

    __slots__ = ("feeds", "fn", "inline", "leaves", "pool_s", "thread_s", "warm")

    def __init__(self, fn: Any, leaves: list[Any], feeds: list[Any]) -> None:
        #: The make_callable (None when the step has feeds: Session.run runs it).
        self.fn = fn
        self.leaves = leaves
        self.feeds = feeds
        #: None while measuring; then whether the caller thread runs the step.
        self.inline: bool | None = None
        self.warm = 0
        self.pool_s: list[float] = []
        self.thread_s: list[float] = []


class RunCache:
    """``sess.run(...)`` with its per-call work done once per step signature.

    When no ``RunOptions`` or ``RunMetadata`` are given, a step without feeds
    runs through a `Session.make_callable` built on its first call, and a step
    of a local session with a simple graph may run on the calling thread (see
    the module docstring): `probe_below` bounds the steps that try, 0 turns it
    off. Results
    and errors are those of ``Session.run``. One cache per TF session; used on the
    session's worker thread only.
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
        options = CALLER_THREAD if signature.inline else None
        return self._call(sess, signature, fetches, feed_dict, options)

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
        if not leaves:
            return None
        fn = None
        if not feed_dict:
            try:
                fn = sess.make_callable(fetches, accept_options=True)
            except Exception:  # Session.run raises it with TF's exact wording
                return None
        if len(self._signatures) >= self.max_entries:
            self._signatures.clear()
        feeds = list(feed_dict) if feed_dict else []
        signature = self._signatures[key] = _Signature(fn, leaves, feeds)
        if not self._local or self.probe_below <= 0:
            signature.inline = False
        return signature

    def _measure(
        self, sess: Any, signature: _Signature, fetches: Any, feed_dict: Any
    ) -> Any:
        """Run one step of a signature still being measured, and maybe decide."""
        if signature.warm < self.warmup:
            signature.warm += 1
            return self._call(sess, signature, fetches, feed_dict, None)
        inline = len(signature.thread_s) < len(signature.pool_s)
        if (
            inline
            and not signature.thread_s
            and not safe_on_caller_thread(sess.graph, signature.leaves, signature.feeds)
        ):
            signature.inline = False
            return self._call(sess, signature, fetches, feed_dict, None)
        start = self.clock()
        try:
            result = self._call(
                sess, signature, fetches, feed_dict, CALLER_THREAD if inline else None
            )
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
        sess: Any, signature: _Signature, fetches: Any, feed_dict: Any, options: Any
    ) -> Any:
        if signature.fn is not None:
            return sess._do_call(signature.fn, options)
        return sess.run(fetches, feed_dict, options)
