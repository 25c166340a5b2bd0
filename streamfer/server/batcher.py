"""The micro-batcher: frames from every connection, one inference worker, batches on demand.

Flush policy (all of it lives in `MicroBatcher._run`):

1. The worker sleeps until the queue holds at least one frame.
2. It then runs at once, unless a bigger batch is worth a short wait: it waits only while
   the batch is not full (< `max_batch`) AND more frames are known to be on their way (a
   connection announced one with `expecting()` and is still decoding it), and never longer
   than `max_wait_ms` from the moment it became ready. So an idle server never delays a
   lone frame: with nothing else in decode, there is nothing to wait for.
3. It takes up to `max_batch` frames, oldest first. Frames past their deadline are answered
   "deadline" and frames whose caller gave up (cancelled) are skipped, before inference.
4. It runs `forward` on its own thread (the event loop keeps reading sockets meanwhile);
   frames that arrive during inference queue up and form the next batch, which is where
   most batching comes from under load ("continuous batching").

Load shedding: `submit` answers "overloaded" at once when `queue_limit` frames are already
waiting, and "shutting_down" after `stop()`; `stop()` still runs what was queued.

`Stage` names the calls the pipeline makes of the model's stage: a MicroBatcher here, or
streamfer.server.inference_worker.WorkerClient in front of the inference process's one.
`inference_stage` builds the model and its batcher from the server's settings (both the
server and the inference process use it), `batcher_for` any batcher with their policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np

from streamfer.protocol import DEADLINE, OVERLOADED, SHUTTING_DOWN

if TYPE_CHECKING:
    from streamfer.model import Predictor
    from streamfer.server.config import ServeConfig
    from streamfer.server.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Ran(Generic[R]):
    """A frame that went through the model: its output and how it got there."""

    value: R
    batch: int  # size of the batch it ran in
    queue_s: float  # from submit to the start of its batch
    inference_s: float  # the batch's forward() time


@dataclass(frozen=True)
class Dropped:
    """A frame answered without inference; `reason` is one of protocol.DROP_REASONS."""

    reason: str


class InferenceFailed(RuntimeError):
    """forward() raised; the batch's frames get this (the cause is logged once, here)."""


@dataclass
class _Job(Generic[T, R]):
    item: T
    deadline: float | None  # time.monotonic() after which it is not worth running
    submitted: float
    future: asyncio.Future[Ran[R] | Dropped] = field(repr=False)


class Expected(Generic[T, R]):
    """A frame announced to the batcher while it is still being decoded (see `expecting`)."""

    def __init__(self, batcher: MicroBatcher[T, R]) -> None:
        self._batcher = batcher
        self._open = True

    def release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._incoming -= 1
            self._batcher._wake.set()

    async def submit(self, item: T, *, deadline: float | None = None) -> Ran[R] | Dropped:
        """Queue the announced frame (the announcement ends in the same step)."""
        self.release()
        return await self._batcher.submit(item, deadline=deadline)


class MicroBatcher(Generic[T, R]):
    """Batches items from many callers through one `forward(items) -> outputs` worker."""

    def __init__(self, forward: Callable[[list[T]], Sequence[R]], *, max_batch: int,
                 max_wait_ms: float, queue_limit: int,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or queue_limit < 1 or max_wait_ms < 0:
            raise ValueError("need max_batch >= 1, queue_limit >= 1, max_wait_ms >= 0")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_limit = queue_limit
        self.on_batch = on_batch  # (batch size, forward seconds), e.g. for metrics
        self._queue: deque[_Job[T, R]] = deque()
        self._incoming = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="streamfer-infer")

    def __len__(self) -> int:
        """Frames waiting for a batch (not counting the batch in inference)."""
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Refuse new frames, run the queued ones, stop the worker and its thread."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._thread.shutdown(wait=True)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[Expected[T, R]]:
        """Announce a frame that is still being decoded, so a forming batch may wait for it.

        Leaving the block without `submit` (no face, bad image, cancelled) withdraws it.
        """
        expected = self.announce()
        try:
            yield expected
        finally:
            expected.release()

    def announce(self) -> Expected[T, R]:
        """`expecting` without the block, for a frame announced by another process
        (streamfer.server.inference_worker): the caller must `release` or `submit` it."""
        self._incoming += 1
        return Expected(self)

    async def submit(self, item: T, *, deadline: float | None = None) -> Ran[R] | Dropped:
        """Queue one item; resolves when its batch has run, or at once when it is shed."""
        if self._closed:
            return Dropped(SHUTTING_DOWN)
        if len(self._queue) >= self.queue_limit:
            return Dropped(OVERLOADED)
        future: asyncio.Future[Ran[R] | Dropped] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(item, deadline, time.monotonic(), future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:  # 1. sleep until there is work
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            fill_until = loop.time() + self.max_wait  # 2. wait only for frames on their way
            while (len(self._queue) < self.max_batch and self._incoming > 0
                   and not self._closed and (left := fill_until - loop.time()) > 0):
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            jobs = self._take()  # 3. up to max_batch live frames
            if jobs:
                await self._infer(loop, jobs)  # 4. forward on the inference thread

    def _take(self) -> list[_Job[T, R]]:
        jobs: list[_Job[T, R]] = []
        now = time.monotonic()
        while self._queue and len(jobs) < self.max_batch:
            job = self._queue.popleft()
            if job.future.done():  # the caller gave up (client disconnected)
                continue
            if job.deadline is not None and now > job.deadline:
                job.future.set_result(Dropped(DEADLINE))
                continue
            jobs.append(job)
        return jobs

    async def _infer(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job[T, R]]) -> None:
        started = time.monotonic()
        try:
            outputs = await loop.run_in_executor(self._thread, self.forward,
                                                 [j.item for j in jobs])
            if len(outputs) != len(jobs):
                raise ValueError(f"forward returned {len(outputs)} outputs for {len(jobs)} items")
        except Exception as exc:  # the worker must outlive a bad batch
            log.exception("inference failed for a batch of %d", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(InferenceFailed(f"inference failed: {exc}"))
            return
        elapsed = time.monotonic() - started
        if self.on_batch is not None:
            self.on_batch(len(jobs), elapsed)
        for job, out in zip(jobs, outputs, strict=True):
            if not job.future.done():
                job.future.set_result(Ran(out, len(jobs), started - job.submitted, elapsed))


class Announced(Protocol):
    """A face announced to a Stage while it decodes (`Stage.expecting`)."""

    def release(self) -> None: ...

    async def submit(self, item: np.ndarray, *, deadline: float | None = None
                     ) -> Ran[np.ndarray] | Dropped: ...


class Stage(Protocol):
    """The model's stage as the pipeline calls it: N x S x S faces in, one at a time, their
    probabilities out. A MicroBatcher over a Predictor, or an inference_worker.WorkerClient."""

    def __len__(self) -> int: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def expecting(self) -> AbstractContextManager[Announced]: ...

    async def submit(self, item: np.ndarray, *, deadline: float | None = None
                     ) -> Ran[np.ndarray] | Dropped: ...


def batcher_for(config: ServeConfig, forward: Callable[[list[T]], Sequence[R]],
                on_batch: Callable[[int, float], None] | None = None) -> MicroBatcher[T, R]:
    """A MicroBatcher with the server's batching policy (--max-batch, --max-wait-ms,
    --queue-limit)."""
    return MicroBatcher(forward, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                        queue_limit=config.queue_limit, on_batch=on_batch)


def load_predictor(config: ServeConfig) -> Predictor:
    """The model as the server's settings say to run it (--model, --device, --tta, ...)."""
    from streamfer.model import Predictor

    return Predictor(config.model, device=config.device, tta=config.tta,
                     max_batch=config.max_batch, optimize=config.optimize,
                     runtime=config.runtime, threads=config.threads)


def inference_stage(config: ServeConfig, metrics: Metrics, predictor: Predictor | None = None,
                    faces: Callable[[list[T]], np.ndarray] = np.stack
                    ) -> tuple[Predictor, MicroBatcher[T, np.ndarray]]:
    """The model (`predictor`, else loaded from `config`) and the batcher in front of it,
    timed in `metrics`; `faces` makes a batch's items one N x S x S array."""
    model = predictor if predictor is not None else load_predictor(config)
    return model, batcher_for(
        config, metrics.timed_forward(lambda items: model.forward(faces(items))),
        metrics.observe_batch)
