"""The micro-batcher and per-connection flow control on their own (no server).

The forward function is a real function on the real inference thread; a threading.Event
holds the worker busy where a test needs "the worker is running a batch". Waits are bounded
by timeouts; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from streamfer.server.batcher import Dropped, InferenceFailed, MicroBatcher, Ran
from streamfer.server.flow import LatestGate, RateLimiter

T = TypeVar("T")
LONG_MS = 60_000.0  # a fill wait no test may sit through: reaching it means the policy broke
BOUND_S = 10.0  # bound on any single wait in these tests


class Model:
    """forward = each item doubled; records batch sizes; can be held busy."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        if not self.release.wait(BOUND_S):
            raise RuntimeError("test never released the worker")
        return [2 * i for i in items]

    def hold(self) -> None:
        self.release.clear()
        self.started.clear()

    async def wait_started(self) -> None:
        assert await asyncio.get_running_loop().run_in_executor(None, self.started.wait, BOUND_S)


@pytest.fixture
def model() -> Model:
    return Model()


@contextlib.asynccontextmanager
async def batcher(model: Model, **kw: float) -> AsyncIterator[MicroBatcher[int, int]]:
    b: MicroBatcher[int, int] = MicroBatcher(model, **kw)  # type: ignore[arg-type]
    b.start()
    try:
        yield b
    finally:
        model.release.set()
        await asyncio.wait_for(b.stop(), BOUND_S)


async def running(b: MicroBatcher[int, int], model: Model) -> asyncio.Future[Ran[int] | Dropped]:
    """Frame 0 submitted and held inside the model, so that what is submitted next queues."""
    model.hold()
    busy = asyncio.ensure_future(b.submit(0))
    await model.wait_started()
    return busy


def bound(aw: Awaitable[T]) -> Awaitable[T]:
    """A wait that fails the test instead of hanging it."""
    return asyncio.wait_for(aw, BOUND_S)


async def test_idle_batcher_runs_a_lone_frame_at_once(model: Model) -> None:
    async with batcher(model, max_batch=8, max_wait_ms=LONG_MS, queue_limit=8) as b:
        out = await bound(b.submit(21))
        assert out == Ran(42, batch=1, queue_s=out.queue_s, inference_s=out.inference_s)
        assert model.batches == [[21]]


async def test_flushes_when_full_without_waiting_out_max_wait(model: Model) -> None:
    async with batcher(model, max_batch=4, max_wait_ms=LONG_MS, queue_limit=16) as b:
        with b.expecting(), b.expecting():  # frames "on their way" that never arrive
            outs = await bound(asyncio.gather(*(b.submit(i) for i in range(4))))
        assert [o.value for o in outs] == [0, 2, 4, 6]
        assert {o.batch for o in outs} == {4}
        assert model.batches == [[0, 1, 2, 3]]


async def test_waits_for_announced_frames_to_fill_a_batch(model: Model) -> None:
    async with batcher(model, max_batch=8, max_wait_ms=LONG_MS, queue_limit=16) as b:
        with b.expecting() as late:
            first = asyncio.ensure_future(b.submit(1))
            await asyncio.sleep(0.05)  # the worker is now waiting for the announced frame
            assert not first.done() and len(b) == 1
            second = await bound(late.submit(2))
        assert (await bound(first)).batch == 2 and second.batch == 2
        assert model.batches == [[1, 2]]


async def test_flushes_on_timeout_when_announced_frame_never_comes(model: Model) -> None:
    async with batcher(model, max_batch=8, max_wait_ms=20, queue_limit=8) as b:
        with b.expecting():
            out = await bound(b.submit(5))
        assert out.value == 10 and out.batch == 1


async def test_withdrawn_announcement_releases_the_wait(model: Model) -> None:
    async with batcher(model, max_batch=8, max_wait_ms=LONG_MS, queue_limit=8) as b:
        with b.expecting():
            first = asyncio.ensure_future(b.submit(1))
            await asyncio.sleep(0.05)
            assert not first.done()
        assert (await bound(first)).batch == 1  # no face after all: nothing left to wait for


async def test_frames_queued_during_inference_form_the_next_batch(model: Model) -> None:
    async with batcher(model, max_batch=8, max_wait_ms=0, queue_limit=16) as b:
        busy = await running(b, model)
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        assert len(b) == 5
        model.release.set()
        outs = await bound(asyncio.gather(busy, *rest))
        assert [o.batch for o in outs] == [1, 5, 5, 5, 5, 5]
        assert model.batches == [[0], [1, 2, 3, 4, 5]]


async def test_max_batch_splits_a_long_queue(model: Model) -> None:
    async with batcher(model, max_batch=2, max_wait_ms=0, queue_limit=16) as b:
        busy = await running(b, model)
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        model.release.set()
        await bound(asyncio.gather(busy, *rest))
        assert model.batches == [[0], [1, 2], [3, 4], [5]]


async def test_sheds_load_when_the_queue_is_full(model: Model) -> None:
    async with batcher(model, max_batch=8, max_wait_ms=0, queue_limit=2) as b:
        busy = await running(b, model)
        queued = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert await bound(b.submit(3)) == Dropped("overloaded")  # answered at once
        model.release.set()
        outs = await bound(asyncio.gather(busy, *queued))
        assert [o.value for o in outs] == [0, 2, 4]


async def test_frames_past_their_deadline_are_dropped_before_inference(model: Model) -> None:
    async with batcher(model, max_batch=8, max_wait_ms=0, queue_limit=8) as b:
        busy = await running(b, model)
        late = asyncio.ensure_future(b.submit(1, deadline=time.monotonic()))
        fresh = asyncio.ensure_future(b.submit(2, deadline=time.monotonic() + 3600))
        await asyncio.sleep(0)
        model.release.set()
        assert await bound(late) == Dropped("deadline")
        assert (await bound(fresh)).value == 4
        await bound(busy)
        assert model.batches == [[0], [2]]


async def test_cancelled_callers_are_skipped(model: Model) -> None:
    async with batcher(model, max_batch=8, max_wait_ms=0, queue_limit=8) as b:
        busy = await running(b, model)
        gone = asyncio.ensure_future(b.submit(1))
        kept = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        model.release.set()
        assert (await bound(kept)).value == 4
        await bound(busy)
        assert model.batches == [[0], [2]]


async def test_a_failing_batch_fails_its_frames_and_the_worker_goes_on() -> None:
    calls: list[list[int]] = []

    def forward(items: list[int]) -> list[int]:
        calls.append(items)
        if 13 in items:
            raise ValueError("unlucky")
        return items

    b: MicroBatcher[int, int] = MicroBatcher(forward, max_batch=4, max_wait_ms=0,
                                             queue_limit=4)
    b.start()
    try:
        with pytest.raises(InferenceFailed, match="unlucky"):
            await bound(b.submit(13))
        assert (await bound(b.submit(7))).value == 7
    finally:
        await bound(b.stop())


async def test_stop_runs_queued_frames_then_refuses_new_ones(model: Model) -> None:
    b: MicroBatcher[int, int] = MicroBatcher(model, max_batch=8, max_wait_ms=0, queue_limit=8)
    b.start()
    busy = await running(b, model)
    queued = asyncio.ensure_future(b.submit(1))
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(b.stop())
    await asyncio.sleep(0)
    assert await bound(b.submit(2)) == Dropped("shutting_down")
    model.release.set()
    await bound(stopping)
    assert (await bound(busy)).value == 0 and (await bound(queued)).value == 2


def test_latest_gate_keeps_one_in_flight_and_the_newest_waiting() -> None:
    gate: LatestGate[str] = LatestGate()
    assert gate.offer("a") == (True, None)  # idle: runs now
    assert gate.offer("b") == (False, None)  # waits behind a
    assert gate.offer("c") == (False, "b")  # replaces b: b is answered superseded
    assert gate.offer("d") == (False, "c")
    assert gate.done() == "d"  # a answered; d now in flight
    assert gate.busy
    assert gate.done() is None and not gate.busy  # idle again
    assert gate.offer("e") == (True, None)
    assert gate.offer("f") == (False, None)
    assert gate.take_waiting() == "f" and gate.done() is None


def test_rate_limiter_caps_the_average_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(10.0, burst=2.0, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(3)] == [True, True, False]  # burst of 2
    now[0] += 0.1  # one frame's worth of time at 10 fps
    assert [limiter.allow() for _ in range(2)] == [True, False]
    now[0] += 10.0  # a long pause refills only up to the burst
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    allowed = 0
    for _ in range(1000):  # 10 s at 100 fps offered
        now[0] += 0.01
        allowed += limiter.allow()
    assert 98 <= allowed <= 101  # 10 fps over 10 s
    assert all(RateLimiter(0).allow() for _ in range(100))  # 0 = no cap
