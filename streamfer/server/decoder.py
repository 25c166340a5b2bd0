"""Decode untrusted images in worker processes, where a decode can be timed and stopped.

What a decode costs is set by its input (pixels, scans, a corrupt stream), and a decoder
running in a thread cannot be stopped: it goes on after its client has left and holds up the
server's exit. So every image a client sends is checked (streamfer.imagecheck, against the
ImageLimits of its entry point) and decoded in one of a few worker processes, never on the
event loop nor in the server's own threads. Each decode has a time budget (ImageLimits.budget_s):
a worker still busy at its end -- or whose caller has gone (a client that left, a server
shutting down) -- is killed (SIGKILL) and replaced. A worker's stderr is captured, so
libjpeg's and libpng's warnings about a corrupt file become one log line instead of raw text
on the server's stderr.

Workers are forked from a small fork server (multiprocessing's "forkserver") that has only
imported the decoders (this module: libjpeg-turbo, Pillow, numpy; never torch nor OpenCV),
so a replacement starts in milliseconds and shares the fork server's pages. A worker dies
with its fork server, which dies with the server process.

What comes back: a crop already resized to the model's input (a few KB); a frame or photo as
8-bit grayscale (at most ImageLimits.max_pixels bytes), for the face search in the server's
threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import simplejpeg

from streamfer.faces import decode_gray, resize_square
from streamfer.imagecheck import (
    CROP,
    JPEG_MAGIC,
    LIMITS,
    BadImage,
    ImageLimits,
    check_image,
)
from streamfer.server.photodecode import decode_photo

log = logging.getLogger(__name__)

READY = b"ready"
START_S = 30.0  # a new decode process must be ready within this
STDERR_KEPT = 300
# A crop this small decodes in tens of microseconds, less than the hop to a decode process
# and back costs; `python -m bench.server overhead` measures both.
INLINE_BYTES = 16 * 1024
INLINE_PIXELS = 128 * 128  # characters of a decoder's complaint kept for the log line
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Decoded:
    """A decode's result: `pixels` (a crop: the model-ready face; else the grayscale image),
    the decoded image's (width, height), the photo's DCT reduction factor, and what the
    decoder said of a damaged file it still decoded."""

    pixels: np.ndarray
    size: tuple[int, int]
    scale: int = 1
    said: str = ""


def decode(limits: ImageLimits, data: bytes, face_size: int) -> Decoded:
    """Check, then decode, one image within `limits` (its entry point's). Runs in a worker
    process; also callable directly (tests, benchmarks)."""
    info = check_image(data, limits)
    warnings: list[str] = []
    if limits.photo:
        gray, scale = decode_photo(data, info=info, warnings=warnings)
    else:
        try:
            gray, scale = decode_gray(data, warnings=warnings), 1
        except BadImage:
            raise BadImage(f"not a decodable {info.format} image") from None
    size = (gray.shape[1], gray.shape[0])
    said = "\n".join(warnings)
    if limits.name == CROP.name:
        return Decoded(resize_square(gray, face_size), size, scale, said)
    return Decoded(gray, size, scale, said)


def decode_inline(data: bytes, face_size: int) -> Decoded | None:
    """A crop whose decoding costs little by construction, decoded where it is (the event
    loop), or None for the decode processes: a baseline JPEG of at most INLINE_BYTES bytes,
    INLINE_PIXELS pixels and one scan per component, as the page sends. The marker walk has
    read all of it first, so nothing about it is left to chance; libjpeg-turbo decodes it,
    strictly (a corrupt one goes to the processes, which decode what they can)."""
    if len(data) > INLINE_BYTES or not data.startswith(JPEG_MAGIC):
        return None
    try:
        info = check_image(data, CROP)
    except BadImage:
        return None  # the decode process answers it, in its own words
    if info.coding != "baseline" or info.scans > 3 or info.width * info.height > INLINE_PIXELS:
        return None
    try:
        gray = simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)[:, :, 0]
    except ValueError:  # truncated or corrupt: the decode process decodes what it can
        return None
    return Decoded(resize_square(gray, face_size), (gray.shape[1], gray.shape[0]))


def _worker_main(conn: Connection) -> None:
    """A decode process: answer (limits, data, face_size) jobs until the pipe closes."""
    with contextlib.suppress(Exception):  # Linux: die with the fork server
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # libpng and libheif may print warnings to stderr (fd 2): keep them for the job's reply,
    # with what libjpeg-turbo said (Decoded.said).
    captured = os.memfd_create("streamfer-decode-stderr")
    os.dup2(captured, 2)
    conn.send_bytes(READY)
    while True:
        try:
            limits, data, face_size = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            out: tuple[str, Any] = ("ok", decode(limits, data, face_size))
        except BadImage as exc:
            out = ("bad", str(exc))
        except MemoryError:
            out = ("bad", "image too large to decode in memory")
        except Exception as exc:  # a decoder fault: the server logs it
            out = ("fault", f"{type(exc).__name__}: {exc}")
        os.lseek(captured, 0, os.SEEK_SET)
        said = os.read(captured, 64 * 1024).decode("utf-8", "replace")
        if out[0] == "ok" and out[1].said:
            said = f"{said}\n{out[1].said}" if said.strip() else out[1].said
        os.ftruncate(captured, 0)
        os.lseek(captured, 0, os.SEEK_SET)
        try:
            conn.send_bytes(pickle.dumps((*out, said), protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            return


class _Worker:
    """One decode process and the server's end of its pipe."""

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        here, there = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(there,), name="streamfer-decode",
                                daemon=True)
        self.proc.start()
        there.close()
        self.conn = here
        try:
            ready = here.poll(START_S) and here.recv_bytes() == READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.reap()
            raise RuntimeError(f"decode process {self.proc.pid} did not start")

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.proc.kill()

    def reap(self) -> None:
        self.kill()
        with contextlib.suppress(OSError, ValueError, AssertionError):
            self.proc.join(2.0)
        with contextlib.suppress(OSError):
            self.conn.close()


class DecodeTimeout(BadImage):
    """A decode outlived its budget: the image costs more than its entry point allows."""


class Abandoned(Exception):
    """The caller gave up on the decode (its client left, or the pool is closing)."""


class _Job:
    """One decode in flight: the worker it holds, so that an abandoning caller can kill it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worker: _Worker | None = None
        self.abandoned = False

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True
            if self.worker is not None:
                self.worker.kill()  # its thread sees EOF at once and replaces it


class DecodePool:
    """`processes` decode workers; `await pool.decode(kind, data)` from the event loop.

    One thread per worker carries the bytes over its pipe and waits for the answer, so the
    loop only schedules; a thread that finds its worker over budget, killed or dead replaces
    it before taking the next job."""

    def __init__(self, processes: int, *, face_size: int,
                 limits: Mapping[str, ImageLimits] = LIMITS,
                 on_message: Callable[[str, str], None] | None = None) -> None:
        self.processes = processes
        self.face_size = face_size
        self.limits = limits
        self.on_message = on_message
        self._ctx = multiprocessing.get_context("forkserver")
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()  # None: closed
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(processes, thread_name_prefix="streamfer-decode")
        self._closed = False
        self.replaced = 0  # workers killed and replaced (over budget, abandoned, crashed)

    def start(self) -> None:
        """Start the workers (blocking: run it off the event loop)."""
        self._ctx.set_forkserver_preload([__name__])
        for _ in range(self.processes):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx)
        with self._lock:
            self._all.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.reap()
        with self._lock:
            self._all.discard(worker)
            closed = self._closed
        if not closed:
            self.replaced += 1
            try:
                self._idle.put(self._spawn())
            except (RuntimeError, OSError) as exc:  # the pool goes on one process short
                log.error("could not replace a decode process: %s", exc)

    def _run(self, job: _Job, limits: ImageLimits, data: bytes) -> tuple[str, Any, str]:
        """In a pool thread: one job on one worker."""
        worker = self._idle.get()
        if worker is None:  # the pool has closed
            self._idle.put(None)
            raise Abandoned
        with job.lock:
            if job.abandoned or self._closed:
                self._idle.put(worker)
                raise Abandoned
            job.worker = worker
        broken = True
        try:
            worker.conn.send_bytes(pickle.dumps((limits, data, self.face_size),
                                                protocol=pickle.HIGHEST_PROTOCOL))
            if not worker.conn.poll(limits.budget_s):
                raise DecodeTimeout(f"{limits.name} took longer than {limits.budget_s:g} s to "
                                    "decode: refused")
            answer = pickle.loads(worker.conn.recv_bytes())
            broken = False
            return answer
        except (EOFError, OSError, pickle.UnpicklingError):
            if job.abandoned or self._closed:
                raise Abandoned from None
            with contextlib.suppress(AssertionError, ValueError):
                worker.proc.join(1.0)
            log.warning("a decode process died decoding a client's %s (exit code %s)",
                        limits.name, worker.proc.exitcode)
            raise BadImage(f"the decoder failed on this {limits.name}") from None
        finally:
            with job.lock:
                job.worker = None
            if broken:
                self._replace(worker)
            else:
                self._idle.put(worker)

    async def decode(self, kind: str, data: bytes) -> Decoded:
        """Check and decode `data` as an image of entry point `kind` (an ImageLimits name)
        within that entry point's budget; BadImage for an image refused, corrupt or over
        budget. Cancelling the caller kills the decode."""
        if self._closed:
            raise Abandoned
        job = _Job()
        fut = asyncio.get_running_loop().run_in_executor(self._threads, self._run, job,
                                                         self.limits[kind], data)
        try:
            status, value, said = await fut
        except asyncio.CancelledError:  # the thread sees its worker die and replaces it
            job.abandon()
            raise
        except DecodeTimeout as exc:
            self._tell(kind, str(exc))
            raise
        if said.strip():
            self._tell(kind, said)
        if status == "ok":
            return value
        if status == "fault":  # the decoder raised what it should not: one line, no traceback
            log.warning("decoding a client's %s failed: %s", kind, value[:STDERR_KEPT])
            raise BadImage(f"the decoder failed on this {kind}")
        raise BadImage(value)

    def _tell(self, kind: str, text: str) -> None:
        line = " / ".join(s.strip() for s in text.splitlines() if s.strip())[:STDERR_KEPT]
        if self.on_message is not None:
            self.on_message(kind, line)
        else:
            log.info("a client's %s: %s", kind, line)

    def close(self) -> None:
        """Kill every worker, busy or not (blocking: run it off the event loop)."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
        for worker in workers:
            worker.kill()
        self._idle.put(None)  # wakes a thread waiting for a worker
        self._threads.shutdown(wait=True, cancel_futures=True)
        for worker in workers:
            worker.reap()
        with self._lock:
            self._all.clear()
