"""`--inference-worker`: N front-end processes feeding ONE inference process, ONE batcher.

Why: with `--processes N` alone each process loads its own model and batches only its own
connections' faces; on a GPU machine that is N CUDA contexts and N small batches where the
GPU wants one big one, and on a many-core machine the Python front-end (WebSocket, decode,
face detection) is the limit long before the model is. Here the front-ends do everything
up to the 48x48 face, and one process owns the model (and the CUDA context on `--device
cuda`) and runs the server's one micro-batcher (streamfer/server/batcher.py, its flush policy
unchanged) over the faces of every front-end.

The mechanism is the standard library's: one `multiprocessing.Pipe` per front-end for small
messages, and one `multiprocessing.shared_memory` block per front-end for the pixels and the
probabilities, cut into `slots` fixed slots (a face of S x S uint8, then C float32). A
front-end owns the slots it allocates until their reply comes back, so nothing is copied
through the pipe and no slot is written by two processes at once.

Messages (tuples; a few microseconds each to pickle), sent as one list per event-loop turn
(`_Outbox`): a batch's answers, or a crop's EXPECT and SUBMIT, cost one write and one wake-up:

  front-end -> worker   (EXPECT, slot)            a face is being decoded: the forming batch
                                                  may wait for it (the flush policy's rule 2)
                        (WITHDRAW, slot)          it was not a face after all
                        (SUBMIT, slot, deadline)  the face is in the slot; deadline is
                                                  time.monotonic() (one clock for every
                                                  process on Linux)
  worker -> front-end   (READY, ModelInfo, shared-memory name, slots)   once, after warm-up
                        (RAN, slot, batch, inference_s)   probabilities are in the slot
                        (DROPPED, slot, reason)   protocol.DROP_REASONS (deadline, overloaded)
                        (FAILED, slot, message)   forward() raised

Lifecycle (streamfer.server.serve starts it): the worker ignores SIGINT/SIGTERM and stops when every
front-end has closed its pipe, after answering what they sent -- so a graceful shutdown of
the front-ends (which need the model to answer their frames in flight) comes first. A dead
worker closes its pipe ends: each front-end fails its frames in flight and every later one
with an `internal` error naming the worker, and reports not ready on /healthz (503), rather
than waiting; the parent then stops the front-ends and exits non-zero (a supervisor restarts
the whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Histogram

from streamfer.protocol import OVERLOADED, SHUTTING_DOWN
from streamfer.server.batcher import (
    Dropped,
    Expected,
    InferenceFailed,
    Ran,
    inference_stage,
)

if TYPE_CHECKING:
    from streamfer.server.config import ServeConfig

log = logging.getLogger(__name__)

EXPECT, WITHDRAW, SUBMIT = "expect", "withdraw", "submit"
READY, RAN, DROPPED, FAILED = "ready", "ran", "dropped", "failed"
READY_TIMEOUT_S = 300.0  # loading + warming up a model (every batch size on CUDA) takes long
FRONTEND_BUCKETS = (1, 2, 3, 4, 6, 8, 16, 32)


@dataclass(frozen=True)
class ModelInfo:
    """What a front-end needs to know of the model it never loads (greeting, /healthz)."""

    name: str
    classes: list[str]
    input_size: int
    tta: str
    device: str
    runtime: str
    pid: int  # the inference worker's


def slot_count(config: ServeConfig) -> int:
    """Slots per front-end: every connection's frame in flight, a full queue and a batch
    of a photo's extra faces; a front-end with none free answers dropped/overloaded."""
    return config.max_connections + config.queue_limit + config.max_batch


def shm_name(parent_pid: int, index: int) -> str:
    """The shared-memory block of front-end `index` (the parent removes leftovers)."""
    return f"streamfer-{parent_pid}-{index}"


class Slots:
    """A shared-memory block as `count` (face, probabilities) pairs."""

    def __init__(self, shm: SharedMemory, count: int, size: int, classes: int) -> None:
        self.shm = shm
        face_bytes = count * size * size
        self.faces = np.ndarray((count, size, size), np.uint8, shm.buf, 0)
        self.probs = np.ndarray((count, classes), np.float32, shm.buf, face_bytes)

    @staticmethod
    def nbytes(count: int, size: int, classes: int) -> int:
        return count * (size * size + 4 * classes)

    def close(self) -> None:
        del self.faces, self.probs  # views of shm.buf must go before it closes
        self.shm.close()


class _Outbox:
    """The messages for one pipe, sent as one list at the end of the event loop's turn."""

    def __init__(self, link: Connection, broken: Callable[[Exception], None]) -> None:
        self.link = link
        self.broken = broken
        self.msgs: list[tuple[Any, ...]] = []

    def put(self, msg: tuple[Any, ...]) -> None:
        self.msgs.append(msg)
        if len(self.msgs) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        msgs, self.msgs = self.msgs, []
        if msgs:
            try:
                self.link.send(msgs)
            except (OSError, ValueError) as exc:  # the other end is gone (or ours closed)
                self.broken(exc)


# --- the inference process --------------------------------------------------------------


class _Worker:
    """The inference process's event loop: every front-end's pipe, one MicroBatcher."""

    def __init__(self, config: ServeConfig, links: list[Connection], names: list[str]) -> None:
        from streamfer.server.metrics import Metrics

        self.config = config
        self.links = links
        self.metrics = Metrics()
        self.frontends = Histogram(
            "streamfer_batch_frontends", "Front-end processes whose faces shared an inference "
            "batch (--inference-worker)", buckets=FRONTEND_BUCKETS,
            registry=self.metrics.registry)
        self.predictor, self.batcher = inference_stage(config, self.metrics, faces=self._faces)
        p = self.predictor
        count = slot_count(config)
        size = Slots.nbytes(count, p.input_size, len(p.classes))
        self.slots = [Slots(SharedMemory(name, create=True, size=size), count, p.input_size,
                            len(p.classes)) for name in names]
        self.expected: dict[tuple[int, int], Expected[Any, Any]] = {}
        self.outboxes = [_Outbox(link, lambda _, i=i: self._closed(i))
                         for i, link in enumerate(links)]
        self.open = set(range(len(links)))
        self.tasks: set[asyncio.Task[None]] = set()
        self.all_closed = asyncio.Event()

    def _faces(self, items: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """A batch's faces (from which front-ends: counted) as one array."""
        self.frontends.observe(len({i for i, _ in items}))
        return np.stack([face for _, face in items])

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        p = self.predictor
        await loop.run_in_executor(None, p.warm_up, self.config.max_batch)
        info = ModelInfo(p.name, p.classes, p.input_size, p.tta, str(p.device), p.runtime,
                         os.getpid())
        self.batcher.start()
        for i, link in enumerate(self.links):
            try:
                link.send((READY, info, self.slots[i].shm.name, self.slots[i].faces.shape[0]))
            except OSError:  # that front-end is already gone
                self._closed(i)
                continue
            loop.add_reader(link.fileno(), self._readable, i)
        log.info("inference worker: model %s on %s (%s), one batcher for %d front-ends",
                 p.name, p.device, p.runtime, len(self.links))
        if self.open:
            await self.all_closed.wait()
        await asyncio.gather(*self.tasks)
        await self.batcher.stop()
        for slots in self.slots:
            slots.close()
            with contextlib.suppress(FileNotFoundError):
                slots.shm.unlink()
        log.info("inference worker: every front-end has gone; stopped")

    def _readable(self, i: int) -> None:
        link = self.links[i]
        try:
            while link.poll():
                for msg in link.recv():
                    self._handle(i, msg)
        except (EOFError, OSError):
            self._closed(i)

    def _closed(self, i: int) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.links[i].fileno())
        for key in [k for k in self.expected if k[0] == i]:
            self.expected.pop(key).release()
        self.open.discard(i)
        if not self.open:
            self.all_closed.set()

    def _handle(self, i: int, msg: tuple[Any, ...]) -> None:
        kind, slot = msg[0], msg[1]
        if kind == EXPECT:
            self.expected[i, slot] = self.batcher.announce()
        elif kind == WITHDRAW:
            if (e := self.expected.pop((i, slot), None)) is not None:
                e.release()
        elif kind == SUBMIT:
            task = asyncio.get_running_loop().create_task(
                self._run(i, slot, self.expected.pop((i, slot), None), msg[2]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            log.error("front-end %d sent an unknown message %r", i, kind)

    async def _run(self, i: int, slot: int, expected: Expected[Any, Any] | None,
                   deadline: float | None) -> None:
        item = (i, self.slots[i].faces[slot])
        try:
            ran = await (expected.submit(item, deadline=deadline) if expected is not None
                         else self.batcher.submit(item, deadline=deadline))
        except InferenceFailed as exc:
            reply: tuple[Any, ...] = (FAILED, slot, str(exc))
        else:
            if isinstance(ran, Dropped):
                reply = (DROPPED, slot, ran.reason)
            else:
                self.slots[i].probs[slot] = ran.value
                reply = (RAN, slot, ran.batch, ran.inference_s)
        if i in self.open:
            self.outboxes[i].put(reply)


def serve_worker(config: ServeConfig, links: list[Connection], names: list[str]) -> int:
    """The inference process's body: until every front-end has closed its pipe."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the front-ends go first; see the docstring
        signal.signal(sig, signal.SIG_IGN)

    async def main() -> None:
        await _Worker(config, links, names).run()

    from streamfer.model import ModelError

    try:
        asyncio.run(main())
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    return 0


# --- a front-end's end ------------------------------------------------------------------


class WorkerGone(InferenceFailed):
    """The inference worker has exited: no frame of this front-end can be answered."""


class _Pending:
    __slots__ = ("future", "sent")

    def __init__(self, future: asyncio.Future[Ran[np.ndarray] | Dropped], sent: float) -> None:
        self.future = future
        self.sent = sent


class RemoteExpected:
    """A face announced to the worker's batcher while this front-end decodes it."""

    def __init__(self, client: WorkerClient, slot: int | None) -> None:
        self._client = client
        self.slot = slot

    def release(self) -> None:
        if self.slot is not None:
            self._client._send((WITHDRAW, self.slot))
            self._client._free(self.slot)
            self.slot = None

    async def submit(self, item: np.ndarray, *, deadline: float | None = None
                     ) -> Ran[np.ndarray] | Dropped:
        slot, self.slot = self.slot, None
        return await self._client._submit(item, deadline, slot)


class WorkerClient:
    """A front-end's inference: the same calls as streamfer.server.batcher.MicroBatcher (what
    streamfer.server.pipeline uses), served by the inference worker's one batcher."""

    def __init__(self, link: Connection) -> None:
        self.link = link
        self.model: ModelInfo | None = None
        self.slots: Slots | None = None
        self._free_slots: list[int] = []
        self._pending: dict[int, _Pending] = {}
        self._alive = True
        self._why = "the inference worker is not running"
        self._closed = False
        self._reading = False
        self._outbox = _Outbox(link, lambda exc: self._gone(
            f"the inference worker's pipe broke ({exc})"))
        self._drained: asyncio.Event | None = None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ModelInfo:
        """Block until the worker has loaded and warmed up the model (before serving)."""
        from streamfer.model import ModelError

        try:
            if not self.link.poll(timeout):
                raise ModelError(f"the inference worker was not ready within {timeout:g} s")
            kind, info, name, count = self.link.recv()
        except (EOFError, OSError):
            raise ModelError("the inference worker exited before it was ready (its log "
                             "says why)") from None
        assert kind == READY, kind
        shm = SharedMemory(name)
        self.slots = Slots(shm, count, info.input_size, len(info.classes))
        self._free_slots = list(range(count - 1, -1, -1))
        self.model = info
        return info

    # the MicroBatcher calls ----------------------------------------------------------

    def __len__(self) -> int:
        """Faces at the worker, not yet answered (its queue and its batch in inference)."""
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def why_not(self) -> str:
        return self._why

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.link.fileno(), self._readable)
        self._reading = True

    async def stop(self, timeout: float = 10.0) -> None:
        """Refuse new faces, wait for the answers in flight, close the pipe (the worker
        stops once every front-end has)."""
        self._closed = True
        if self._pending and self._alive:
            self._drained = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        self._stop_reading()
        self._outbox.flush()
        self.link.close()
        self._gone("this front-end is shutting down")
        if self.slots is not None:
            self.slots.close()
            self.slots = None

    @contextlib.contextmanager
    def expecting(self) -> Iterator[RemoteExpected]:
        slot = self._take() if self._alive and not self._closed else None
        if slot is not None:
            self._send((EXPECT, slot))
        expected = RemoteExpected(self, slot)
        try:
            yield expected
        finally:
            expected.release()

    async def submit(self, item: np.ndarray, *, deadline: float | None = None
                     ) -> Ran[np.ndarray] | Dropped:
        return await self._submit(item, deadline, None)

    # internals ----------------------------------------------------------------------

    def _take(self) -> int | None:
        return self._free_slots.pop() if self._free_slots else None

    def _free(self, slot: int) -> None:
        self._free_slots.append(slot)

    def _send(self, msg: tuple[Any, ...]) -> None:
        if self._alive:
            self._outbox.put(msg)

    async def _submit(self, face: np.ndarray, deadline: float | None, slot: int | None
                      ) -> Ran[np.ndarray] | Dropped:
        if not self._alive:
            if slot is not None:
                self._free(slot)
            raise WorkerGone(self._why)
        if self._closed:
            if slot is not None:
                self._free(slot)
            return Dropped(SHUTTING_DOWN)
        if slot is None:
            slot = self._take()
            if slot is None:  # every slot in use: this front-end's share is full
                return Dropped(OVERLOADED)
        assert self.slots is not None
        self.slots.faces[slot] = face
        future: asyncio.Future[Ran[np.ndarray] | Dropped] = \
            asyncio.get_running_loop().create_future()
        self._pending[slot] = _Pending(future, time.monotonic())
        self._send((SUBMIT, slot, deadline))
        try:
            return await future
        finally:
            # The slot is free once its answer has come (or the worker is gone); a caller
            # that gave up (cancelled) leaves it to the reader: the worker may still be
            # reading its face or writing its probabilities.
            if future.done() and not future.cancelled():
                self._release(slot)

    def _release(self, slot: int) -> None:
        if self._pending.pop(slot, None) is not None:
            self._free(slot)
        if self._drained is not None and not self._pending:
            self._drained.set()

    def _readable(self) -> None:
        try:
            while self.link.poll():
                for msg in self.link.recv():
                    self._answer(msg)
        except (EOFError, OSError):
            self._gone("the inference worker exited")

    def _answer(self, msg: tuple[Any, ...]) -> None:
        kind, slot = msg[0], msg[1]
        pending = self._pending.get(slot)
        if pending is None:
            return
        if pending.future.done():  # its caller gave up: the slot is free only now
            self._release(slot)
            return
        if kind == RAN:
            assert self.slots is not None
            batch, inference_s = msg[2], msg[3]
            round_trip = time.monotonic() - pending.sent
            pending.future.set_result(Ran(self.slots.probs[slot].copy(), batch,
                                          max(0.0, round_trip - inference_s), inference_s))
        elif kind == DROPPED:
            pending.future.set_result(Dropped(msg[2]))
        else:
            pending.future.set_exception(InferenceFailed(msg[2]))

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.link.fileno())

    def _gone(self, why: str) -> None:
        """The worker cannot answer any more: fail what waits, refuse what comes."""
        if not self._alive:
            return
        self._alive = False
        self._why = why
        if not self._closed:
            log.error("%s: frames get an internal error and /healthz says not ready", why)
        self._stop_reading()
        for slot, pending in list(self._pending.items()):
            if not pending.future.done():
                pending.future.set_exception(WorkerGone(why))
            self._release(slot)
