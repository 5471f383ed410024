"""asyncsess.Batcher: concurrent callers share device steps, each gets its own rows."""

from __future__ import annotations

import collections
import random
import threading
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import CollectorRegistry, generate_latest

import asyncsess
from asyncsess._batch_metrics import register_batch_metrics
from asyncsess._batch_stats import BatchStats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

v1 = tf.compat.v1
Pair = collections.namedtuple("Pair", ["doubled", "seen"])


class RowModel:
    """Row-aligned outputs of a [None, 3] input, and a few that are not."""

    def __init__(self) -> None:
        self.graph = tf.Graph()
        self.release = threading.Event()
        self.entered = threading.Event()
        with self.graph.as_default():
            self.global_step = v1.train.get_or_create_global_step()
            self.x = v1.placeholder(tf.float32, [None, 3], name="x")
            self.k = v1.placeholder(tf.int32, [None], name="k")
            self.w = v1.get_variable("w", initializer=[1.0, 2.0, 3.0])
            self.doubled = tf.identity(self.x * 2.0 + 1.0, name="doubled")
            self.score = tf.reduce_sum(self.x * self.w, axis=1, name="score")
            self.shifted = tf.add(self.k, 10, name="shifted")
            self.words = v1.placeholder(tf.string, [None], name="words")
            self.upper = tf.strings.upper(self.words, name="upper")
            rows = tf.shape(self.x)[0]
            self.seen = tf.fill([rows], rows, name="seen")  # the batch's row count
            self.total = tf.reduce_sum(self.x, name="total")  # not row-aligned
            with tf.control_dependencies(
                [tf.debugging.assert_non_negative(self.x, message="negative input")]
            ):
                self.checked = tf.identity(self.x, name="checked")
            self.blocked = tf.identity(
                tf.numpy_function(self._block, [self.x], tf.float32),
                name="blocked",
            )
            self.train_op = v1.assign_add(self.global_step, 1)

    def _block(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(30)
        return x


@pytest.fixture
def rows_model() -> Iterator[RowModel]:
    m = RowModel()
    with m.graph.as_default():
        yield m


@pytest.fixture
async def session(rows_model: RowModel) -> AsyncIterator[asyncsess.MonitoredSession]:
    async with asyncsess.MonitoredSession() as sess:
        yield sess


def rows_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


async def hold_device(
    sess: asyncsess.MonitoredSession, started: anyio.Event, release: anyio.Event
) -> None:
    """Keep the session's device busy, as a training step does, until *release*."""
    async with sess._unhooked_turn():
        started.set()
        await release.wait()


async def wait_queued(batcher: asyncsess.Batcher, rows: int) -> None:
    with anyio.fail_after(10):
        while batcher.stats.queued_rows < rows:  # noqa: ASYNC110 - polls a counter
            await anyio.sleep(0.001)


class TestBatching:
    async def test_concurrent_callers_share_one_step(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        counts = [1, 4, 2, 3, 5, 1]
        results: dict[int, Any] = {}
        async with asyncsess.Batcher(
            session, max_batch_size=sum(counts), batch_timeout_secs=30
        ) as batcher:
            # The first call would run at once on an idle session: keep it busy.
            started, release = anyio.Event(), anyio.Event()

            async def call(i: int) -> None:
                results[i] = await batcher.run(
                    {"d": rows_model.doubled, "s": rows_model.seen},
                    {rows_model.x: rows_of(counts[i], i)},
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_device, session, started, release)
                await started.wait()
                for i in range(len(counts)):
                    tg.start_soon(call, i)
                await wait_queued(batcher, sum(counts))
                release.set()
        assert batcher.stats.batches == 1
        assert batcher.stats.rows == sum(counts)
        for i, n in enumerate(counts):
            np.testing.assert_allclose(results[i]["d"], rows_of(n, i) * 2 + 1)
            assert results[i]["s"].tolist() == [sum(counts)] * n

    async def test_random_structures_match_unbatched_runs(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        m = rows_model
        structures: list[Any] = [
            m.doubled,
            [m.score, m.doubled],
            (m.score,),
            {"a": m.doubled, "b": [m.score, {"c": m.doubled}]},
            Pair(doubled=m.doubled, seen=m.score),
            [m.score, m.train_op.op],
        ]
        rng = random.Random(7)
        calls = [(rng.choice(structures), rng.randint(1, 9), i) for i in range(40)]
        got: dict[int, Any] = {}
        async with asyncsess.Batcher(
            session, max_batch_size=16, batch_timeout_secs=0.005
        ) as batcher:

            async def call(fetches: Any, n: int, i: int) -> None:
                got[i] = await batcher.run(fetches, {m.x: rows_of(n, i)})

            async with anyio.create_task_group() as tg:
                for fetches, n, i in calls:
                    tg.start_soon(call, fetches, n, i)
        assert batcher.stats.batches < len(calls)
        for fetches, n, i in calls:
            expected = await session.run_without_hooks(fetches, {m.x: rows_of(n, i)})
            assert type(got[i]) is type(expected)
            assert_same(got[i], expected)

    async def test_a_large_call_is_split_and_joined(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        x = rows_of(10)
        async with asyncsess.Batcher(session, max_batch_size=4) as batcher:
            out = await batcher.run(
                [rows_model.doubled, rows_model.seen], {rows_model.x: x}
            )
        np.testing.assert_allclose(out[0], x * 2 + 1)
        assert out[1].tolist() == [4] * 8 + [2] * 2
        assert batcher.stats.batches == 3

    async def test_padding_to_allowed_sizes_is_cut_from_results(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        async with asyncsess.Batcher(
            session, max_batch_size=8, allowed_batch_sizes=[2, 4, 8]
        ) as batcher:
            out = await batcher.run(
                {"seen": rows_model.seen, "d": rows_model.doubled},
                {rows_model.x: rows_of(3)},
            )
            big = await batcher.run(rows_model.seen, {rows_model.x: rows_of(11)})
        assert out["seen"].tolist() == [4, 4, 4]  # the device saw 4 rows
        np.testing.assert_allclose(out["d"], rows_of(3) * 2 + 1)
        assert big.tolist() == [8] * 8 + [4] * 3
        assert batcher.stats.padding_rows == 1 + 1

    async def test_two_feeds_and_int_inputs(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        m = rows_model
        async with asyncsess.Batcher(session, batch_timeout_secs=0.01) as batcher:
            async with anyio.create_task_group() as tg:
                outs: list[Any] = [None, None]

                async def call(i: int, ks: list[int]) -> None:
                    outs[i] = await batcher.run(
                        [m.shifted, m.score], {m.k: ks, m.x: rows_of(len(ks), i)}
                    )

                tg.start_soon(call, 0, [1, 2])
                tg.start_soon(call, 1, [5])
        assert outs[0][0].tolist() == [11, 12]
        assert outs[1][0].tolist() == [15]

    async def test_calls_without_rows_run_alone(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        async with asyncsess.Batcher(session) as batcher:
            assert await batcher.run(rows_model.w) == pytest.approx([1, 2, 3])
            empty = await batcher.run(
                rows_model.doubled, {rows_model.x: np.zeros((0, 3), np.float32)}
            )
        assert empty.shape == (0, 3)
        assert batcher.stats.batches == 0


class TestWaiting:
    async def test_rows_wait_and_batch_while_the_session_is_busy(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        started, release = anyio.Event(), anyio.Event()
        async with (
            asyncsess.Batcher(session, batch_timeout_secs=0) as batcher,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(hold_device, session, started, release)
            await started.wait()
            for i in range(5):
                tg.start_soon(
                    batcher.run, rows_model.doubled, {rows_model.x: rows_of(2, i)}
                )
            await wait_queued(batcher, 10)
            release.set()
        assert batcher.stats.batches == 1
        assert batcher.stats.rows == 10

    async def test_a_full_queue_refuses_at_once(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        started, release = anyio.Event(), anyio.Event()
        async with (
            asyncsess.Batcher(session, max_enqueued=5) as batcher,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(hold_device, session, started, release)
            await started.wait()
            tg.start_soon(batcher.run, rows_model.doubled, {rows_model.x: rows_of(4)})
            await wait_queued(batcher, 4)
            with pytest.raises(asyncsess.BatchQueueFullError, match="max_enqueued=5"):
                await batcher.run(rows_model.doubled, {rows_model.x: rows_of(2)})
            assert issubclass(asyncsess.BatchQueueFullError, RuntimeError)
            one = await_later(
                batcher.run, rows_model.doubled, {rows_model.x: rows_of(1)}
            )
            tg.start_soon(one)
            await wait_queued(batcher, 5)
            release.set()
        assert batcher.stats.refused_calls == 1
        assert batcher.stats.rows == 5

    async def test_a_lone_call_on_an_idle_session_is_not_held(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        # A timeout far longer than the test's bound: only the idle rule runs it.
        async with asyncsess.Batcher(session, batch_timeout_secs=3600) as batcher:
            with anyio.fail_after(30):
                for i in range(3):
                    out = await batcher.run(
                        rows_model.seen, {rows_model.x: rows_of(2, i)}
                    )
                    assert out.tolist() == [2, 2]

    async def test_calls_behind_a_lone_call_are_not_held_for_the_timeout(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        async with asyncsess.Batcher(session, batch_timeout_secs=3600) as batcher:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(6):
                        tg.start_soon(
                            batcher.run, rows_model.seen, {rows_model.x: rows_of(1, i)}
                        )
        assert batcher.stats.rows == 6

    async def test_queues_do_not_pile_up_and_strings_of_any_length_batch(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        m = rows_model
        async with asyncsess.Batcher(session) as batcher:
            for width in range(4, 30):  # a queue per row shape, each refused by TF
                with pytest.raises(ValueError, match="Cannot feed value of shape"):
                    await batcher.run(m.doubled, {m.x: np.ones((1, width))})
            assert batcher._queues == {}
            before = batcher.stats.batches
            started, release = anyio.Event(), anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_device, session, started, release)
                await started.wait()
                for word in ("a", "bcd", "efghij"):
                    tg.start_soon(batcher.run, m.upper, {m.words: [word]})
                await wait_queued(batcher, 3)
                release.set()
            assert batcher._queues == {}
        assert batcher.stats.batches == before + 1

    async def test_a_full_queue_does_not_starve_another_signature(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        m = rows_model
        done: list[str] = []
        started, release = anyio.Event(), anyio.Event()
        async with (
            asyncsess.Batcher(session, max_batch_size=4) as batcher,
            anyio.create_task_group() as tg,
        ):

            async def call(name: str, fetch: Any, rows: int) -> None:
                await batcher.run(fetch, {m.x: rows_of(rows)})
                done.append(name)

            tg.start_soon(hold_device, session, started, release)
            await started.wait()
            for name, fetch, rows in [
                ("A", m.doubled, 4),
                ("B", m.doubled, 4),
                ("light", m.score, 1),
                ("C", m.doubled, 4),
                ("D", m.doubled, 4),
            ]:
                tg.start_soon(call, name, fetch, rows)
                await wait_queued(batcher, batcher.stats.queued_rows + rows)
            release.set()
        assert done.index("light") < done.index("C")


class TestCancellation:
    async def test_a_lone_caller_cancelled_on_the_device(
        self,
        rows_model: RowModel,
        session: asyncsess.MonitoredSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        m = rows_model
        async with asyncsess.Batcher(session) as batcher:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(batcher.run, m.blocked, {m.x: rows_of(1)})
                    await anyio.to_thread.run_sync(m.entered.wait, 30)
                    scope.cancel()
            await anyio.sleep(0.5)  # past the session's step-cancel grace
            m.release.set()
            out = await batcher.run(m.seen, {m.x: rows_of(2)})
        assert out.tolist() == [2, 2]
        # Only the caller's share was dropped: the step itself ran to its end.
        assert "cancelled step" not in caplog.text
        assert batcher.stats.rows == 3

    async def test_a_cancelled_waiting_caller_is_taken_out(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        started, release = anyio.Event(), anyio.Event()
        outs: dict[int, Any] = {}
        async with (
            asyncsess.Batcher(session) as batcher,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(hold_device, session, started, release)
            await started.wait()
            scopes = {i: anyio.CancelScope() for i in range(3)}

            async def call(i: int) -> None:
                with scopes[i]:
                    outs[i] = await batcher.run(
                        [rows_model.seen, rows_model.doubled],
                        {rows_model.x: rows_of(i + 1, i)},
                    )

            for i in range(3):
                tg.start_soon(call, i)
            await wait_queued(batcher, 6)
            scopes[1].cancel()
            await wait_queued_exactly(batcher, 4)
            release.set()
        assert sorted(outs) == [0, 2]
        assert outs[0][0].tolist() == [4]
        assert outs[2][0].tolist() == [4, 4, 4]
        np.testing.assert_allclose(outs[2][1], rows_of(3, 2) * 2 + 1)
        assert batcher.stats.rows == 4

    async def test_a_caller_cancelled_mid_batch_drops_only_its_share(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        m = rows_model
        outs: dict[int, Any] = {}
        started, release = anyio.Event(), anyio.Event()
        scopes = {i: anyio.CancelScope() for i in range(2)}
        async with asyncsess.Batcher(session) as batcher:
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_device, session, started, release)
                await started.wait()

                async def call(i: int) -> None:
                    with scopes[i]:
                        outs[i] = await batcher.run(m.blocked, {m.x: rows_of(2, i)})

                for i in range(2):
                    tg.start_soon(call, i)
                await wait_queued(batcher, 4)
                release.set()
                await anyio.to_thread.run_sync(m.entered.wait, 30)
                scopes[0].cancel()
                await anyio.sleep(0.01)
                m.release.set()
        assert list(outs) == [1]
        np.testing.assert_allclose(outs[1], rows_of(2, 1))
        assert batcher.stats.rows == 4
        # The session stays usable.
        assert (
            await session.run_without_hooks(m.seen, {m.x: rows_of(1)})
        ).tolist() == [1]


class TestErrors:
    async def test_a_step_error_reaches_every_caller_with_its_type(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        m = rows_model
        started, release = anyio.Event(), anyio.Event()
        errors: list[BaseException] = []
        async with (
            asyncsess.Batcher(session) as batcher,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(hold_device, session, started, release)
            await started.wait()

            async def call(x: np.ndarray) -> None:
                try:
                    await batcher.run(m.checked, {m.x: x})
                except tf.errors.InvalidArgumentError as exc:
                    errors.append(exc)

            tg.start_soon(call, rows_of(2) ** 2)
            tg.start_soon(call, -np.ones((1, 3), np.float32))
            await wait_queued(batcher, 3)
            release.set()
        assert len(errors) == 2
        assert all("negative input" in str(e) for e in errors)
        assert errors[0] is not errors[1]
        # Good rows alone still run.
        async with asyncsess.Batcher(session) as batcher:
            await batcher.run(m.checked, {m.x: rows_of(1) ** 2})

    async def test_a_fetch_that_is_not_row_aligned_names_the_tensor(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        async with asyncsess.Batcher(session) as batcher:
            with pytest.raises(ValueError, match=r"'total:0'.*first dimension"):
                await batcher.run(
                    [rows_model.doubled, rows_model.total], {rows_model.x: rows_of(2)}
                )

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"max_batch_size": 0}, "max_batch_size must be an int >= 1"),
            ({"max_batch_size": 2.5}, "Received: 2.5"),
            ({"batch_timeout_secs": -1}, "batch_timeout_secs=-1"),
            ({"batch_timeout_secs": float("nan")}, "batch_timeout_secs=nan"),
            ({"allowed_batch_sizes": [4, 2, 32]}, "ascending"),
            ({"allowed_batch_sizes": [4, 16]}, r"max_batch_size \(32\)"),
            ({"max_enqueued": 0}, "max_enqueued must be"),
        ],
    )
    async def test_bad_arguments_name_the_culprit(
        self, session: asyncsess.MonitoredSession, kwargs: dict[str, Any], match: str
    ) -> None:
        with pytest.raises(ValueError, match=match):
            asyncsess.Batcher(session, **kwargs)

    async def test_bad_feeds_name_the_culprit(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        m = rows_model
        async with asyncsess.Batcher(session) as batcher:
            with pytest.raises(ValueError, match="'k:0' a scalar"):
                await batcher.run(m.shifted, {m.k: 3})
            with pytest.raises(ValueError, match="'k:0' has 1 rows"):
                await batcher.run(m.score, {m.x: rows_of(2), m.k: [1]})

    async def test_run_outside_async_with_is_refused(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        batcher = asyncsess.Batcher(session)
        with pytest.raises(RuntimeError, match="not open"):
            await batcher.run(rows_model.doubled, {rows_model.x: rows_of(1)})
        async with batcher:
            pass
        with pytest.raises(RuntimeError, match="not open"):
            await batcher.run(rows_model.doubled, {rows_model.x: rows_of(1)})
        with pytest.raises(RuntimeError, match="entered once"):
            async with batcher:
                pass

    async def test_leaving_fails_waiting_calls_and_finishes_running_ones(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        m = rows_model
        outcomes: dict[str, Any] = {}
        waiting_failed = anyio.Event()

        async def call(batcher: asyncsess.Batcher, name: str, fetch: Any) -> None:
            try:
                outcomes[name] = await batcher.run(fetch, {m.x: rows_of(1)})
            except RuntimeError as exc:
                outcomes[name] = exc
                waiting_failed.set()

        async def release_when_failed() -> None:
            await waiting_failed.wait()
            m.release.set()

        async with anyio.create_task_group() as tg:
            async with asyncsess.Batcher(session) as batcher:
                tg.start_soon(call, batcher, "running", m.blocked)
                await anyio.to_thread.run_sync(m.entered.wait, 30)
                tg.start_soon(call, batcher, "waiting", m.doubled)
                await wait_queued(batcher, 1)
                tg.start_soon(release_when_failed)
        assert isinstance(outcomes["waiting"], RuntimeError)
        assert "closed before this call ran" in str(outcomes["waiting"])
        np.testing.assert_allclose(outcomes["running"], rows_of(1))

    async def test_an_error_in_the_body_propagates_unwrapped(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        with pytest.raises(KeyError, match="mine"):
            async with asyncsess.Batcher(session) as batcher:
                await batcher.run(rows_model.doubled, {rows_model.x: rows_of(1)})
                raise KeyError("mine")
        with anyio.CancelScope() as scope:
            async with asyncsess.Batcher(session):
                scope.cancel()
                await anyio.sleep(1)
        assert scope.cancelled_caught

    async def test_a_closed_session_fails_the_waiting_calls(
        self, rows_model: RowModel
    ) -> None:
        sess = asyncsess.MonitoredSession()
        await sess.open()
        await sess.close()
        async with asyncsess.Batcher(sess) as batcher:
            with pytest.raises(asyncsess.SessionStateError, match="closed session"):
                await batcher.run(rows_model.doubled, {rows_model.x: rows_of(1)})


class TestTraining:
    async def test_batches_take_turns_with_training_steps(
        self, rows_model: RowModel
    ) -> None:
        m = rows_model
        answered = 0
        async with (
            asyncsess.MonitoredSession() as sess,
            asyncsess.Batcher(sess, batch_timeout_secs=0.001) as batcher,
        ):

            async def train() -> None:
                for _ in range(200):
                    await sess.run(m.train_op)

            async def predict(i: int) -> None:
                nonlocal answered
                for j in range(10):
                    out = await batcher.run(m.doubled, {m.x: rows_of(3, i + j)})
                    np.testing.assert_allclose(out, rows_of(3, i + j) * 2 + 1)
                    answered += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(train)
                for i in range(8):
                    tg.start_soon(predict, i * 100)
            step = await sess.run_without_hooks(m.global_step)
        assert step == 200
        assert answered == 80
        assert batcher.stats.calls == 80
        assert batcher.stats.batches < 80


class TestMetrics:
    async def test_prometheus_metrics(
        self, rows_model: RowModel, session: asyncsess.MonitoredSession
    ) -> None:
        stats = BatchStats()
        registry = CollectorRegistry()
        register_batch_metrics(registry, stats)
        for _ in range(2):  # one stats object across two Batchers (model versions)
            async with asyncsess.Batcher(session, stats=stats) as batcher:
                await batcher.run(rows_model.doubled, {rows_model.x: rows_of(3)})
        text = generate_latest(registry).decode()
        assert "asyncsess_batches_total 2.0" in text
        assert "asyncsess_batched_rows_total 6.0" in text
        assert 'asyncsess_batch_size_bucket{le="4.0"} 2.0' in text
        assert "asyncsess_batch_wait_seconds_count 2.0" in text
        assert "asyncsess_batch_queued_rows 0.0" in text


def await_later(fn: Any, *args: Any) -> Any:
    async def call() -> None:
        await fn(*args)

    return call


async def wait_queued_exactly(batcher: asyncsess.Batcher, rows: int) -> None:
    with anyio.fail_after(10):
        while batcher.stats.queued_rows != rows:  # noqa: ASYNC110 - polls a counter
            await anyio.sleep(0.001)


def assert_same(got: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert list(got) == list(expected)
        for key in expected:
            assert_same(got[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert_same(a, b)
    elif expected is None:
        assert got is None
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6)
