"""One WebSocket connection: read frames, answer each exactly once, never block the reader.

Every binary message gets one JSON reply (result/ok, no_face, dropped or error); a message
with no readable header gets an error with `"id": null`. The reader never waits for the
model: it hands a frame to the connection's LatestGate and reads on, so a newer frame can
supersede one still waiting while the previous one is in flight.

A client cannot hold its connection by not reading or by trickling: every write (reply, ping,
close) has a deadline (`write_timeout_s`), and the connection is pinged every `heartbeat_s`
whatever it sends, and cut when a ping is not answered within `read_timeout_s`. A cut
connection is aborted (its unsent bytes dropped): closing it politely would wait for the very
reads the client is not doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from streamfer import protocol
from streamfer.server.flow import LatestGate, RateLimiter
from streamfer.server.metrics import Metrics
from streamfer.server.pipeline import FaceTrack, FramePipeline

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # aiohttp's own dependency on Python 3.10
    from async_timeout import timeout as deadline

log = logging.getLogger(__name__)


CLOSE_FRAME_S = 1.0  # at shutdown: a client that does not take the close frame by then is cut
# At shutdown, after the closing notice: how long no frame may have arrived before the close
# frame goes out (frames the client sent before it read the notice land within a round trip).
CROSSING_S = 0.2


@dataclass(frozen=True)
class Frame:
    frame_id: int
    image: bytes
    is_crop: bool
    received: float  # time.monotonic() when its message was read
    face_id: int | None = None  # the client's face id (protocol FLAG_FACE), echoed back


class FaceLane:
    """One face's flow: its gate (one frame in flight, the newest waiting), its frame-rate
    budget and the task running its frames. Faces are independent: several faces of one
    camera frame arrive together and must not supersede each other, and their crops then
    batch together in the pipeline."""

    def __init__(self, max_fps: float) -> None:
        self.gate: LatestGate[Frame] = LatestGate()
        self.rate = RateLimiter(max_fps)
        self.worker: asyncio.Task[None] | None = None
        self.used = 0.0  # time.monotonic() of its last frame: the least recent gives way


@dataclass(frozen=True)
class Timeouts:
    """Deadlines that keep a slow or stalled client from holding a connection (seconds)."""

    read: float  # a ping must be answered within this
    write: float  # a reply, ping or close must be taken by the client within this
    heartbeat: float  # ping this often


class FrameStream:
    def __init__(self, ws: web.WebSocketResponse, pipeline: FramePipeline, metrics: Metrics,
                 *, max_frame_bytes: int, max_fps: float, timeouts: Timeouts,
                 transport: asyncio.Transport | None) -> None:
        # `ws` must be made with autoping=False (serve() answers pings and notes pongs itself)
        # and heartbeat=None (aiohttp's heartbeat counts any received byte as life, so a
        # client trickling one endless message would never be pinged).
        self.ws = ws
        self.pipeline = pipeline
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.timeouts = timeouts
        self.transport = transport  # the request's: what cut() aborts
        self.max_fps = max_fps
        # Frames per face id (None: frames that name none); at most protocol.MAX_FACES.
        self.lanes: dict[int | None, FaceLane] = {}
        self.rate = RateLimiter(max_fps)  # pings and frames that name no face take these
        # Every message counts here: a flood past it is closed (several faces' frames each).
        per_s = max(60.0, protocol.MESSAGES_PER_FRAME * protocol.MAX_FACES * max_fps) \
            if max_fps > 0 else protocol.MESSAGES_UNCAPPED
        self.messages = RateLimiter(per_s, burst=per_s)  # past it: a flood, closed
        self.strikes = RateLimiter(protocol.BAD_MESSAGES_PER_S,
                                   burst=protocol.BAD_MESSAGES_BURST)  # messages not frames
        self.track = FaceTrack()  # where this connection's face was last seen
        self.closing = False
        self.cut_reason: str | None = None  # why the server aborted the connection, if it did
        self._pong = asyncio.Event()
        self._parked = asyncio.Event()  # set while serve() waits for a message, none queued
        self._read_at = 0.0  # time.monotonic() of the last message read
        self._shut_down = False
        self._struck_out = False  # too many messages that are not frames: to be closed

    async def send_hello(self, hello: dict[str, Any]) -> bool:
        """The greeting, within the write deadline; False when the connection was cut."""
        return await self._write(self.ws.send_json(hello), "greeting")

    async def serve(self) -> None:
        """Read messages until the client leaves or the server closes the socket."""
        keepalive = asyncio.get_running_loop().create_task(self._keepalive())
        try:
            while True:
                self._parked.set()
                try:
                    msg = await self.ws.receive()
                finally:
                    self._parked.clear()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                received = self._read_at = time.monotonic()
                if msg.type is WSMsgType.ERROR:
                    log.info("websocket closed on error: %s", self.ws.exception())
                    break
                if not self.messages.allow():
                    await self._close_abuse(f"more than {self.messages.rate:g} messages a "
                                            "second")
                    break
                # Every message takes from the connection's rate, except a frame naming a
                # face (that face's own budget, _on_frame).
                within_rate = msg.type is WSMsgType.BINARY or self.rate.allow()
                if msg.type is WSMsgType.PING:
                    if within_rate:  # a ping flood is not answered past the rate
                        await self._write(self.ws.pong(msg.data), "pong")
                elif msg.type is WSMsgType.PONG:
                    self._pong.set()
                elif msg.type is WSMsgType.BINARY:
                    await self._on_frame(msg.data, received)
                elif msg.type is WSMsgType.TEXT:
                    self.metrics.frames_in.labels("ws").inc()
                    self._strike()
                    await self._send(None, protocol.error(
                        "text message ignored: a frame is a binary message (8-byte header, "
                        "then a JPEG/PNG image)", protocol.BAD_MESSAGE))
                if self._struck_out:
                    await self._close_abuse(
                        f"more than {protocol.BAD_MESSAGES_BURST} messages that are not "
                        "frames (text, empty, unknown version, oversize)")
                    break
                await asyncio.sleep(0)  # one message per turn: other connections run too
        finally:
            keepalive.cancel()
            await self._abandon()

    def _strike(self) -> None:
        """A message that is not a frame: a few are forgiven, a stream of them is not."""
        if not self.strikes.allow():
            self._struck_out = True

    async def _close_abuse(self, why: str) -> None:
        """Send a close frame with protocol.CLOSE_ABUSE and the reason, then drop the
        connection. Not aiohttp's close(): that reads on until the client's own close frame,
        and a flood already buffered would be read through without a pause."""
        if self.cut_reason is not None:
            return
        log.info("closed a WebSocket (%d): %s", protocol.CLOSE_ABUSE, why)
        self.cut_reason, self.closing = why, True
        t = self.transport
        if t is None or t.is_closing():
            return
        payload = struct.pack(">H", protocol.CLOSE_ABUSE) + why.encode()[:120]
        t.write(bytes([0x88, len(payload)]) + payload)  # an unmasked close frame (RFC 6455)
        # What the client still sends is dropped unread (closing on unread data would reset
        # the connection, and the client could lose the close frame); it has CLOSE_FRAME_S
        # to take the frame and close, then the connection is cut.
        sink = _Sink(t.get_protocol())
        t.set_protocol(sink)
        if t.can_write_eof():
            t.write_eof()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(sink.lost), CLOSE_FRAME_S)
        t.abort()

    async def _keepalive(self) -> None:
        """Ping every `heartbeat` s; no pong within `read` s: the client is gone or stalled."""
        while not self.ws.closed:
            await asyncio.sleep(self.timeouts.heartbeat)
            self._pong.clear()
            if not await self._write(self.ws.ping(), "ping"):
                return
            try:
                await asyncio.wait_for(self._pong.wait(), self.timeouts.read)
            except asyncio.TimeoutError:
                self.cut(f"no pong within {self.timeouts.read:g} s of a ping")
                return

    async def _write(self, aw: Awaitable[Any], what: str, timeout: float | None = None) -> bool:
        """Send within the write deadline; False (and the connection cut) when it did not go."""
        timeout = self.timeouts.write if timeout is None else timeout
        try:
            async with deadline(timeout):  # inline: no task, no yield before `aw`
                await aw
        except asyncio.TimeoutError:
            self.cut(f"a {what} waited {timeout:g} s for the client to read")
            return False
        except ConnectionError:  # the client left (aiohttp's reset errors subclass this)
            return False
        return True

    def cut(self, reason: str) -> None:
        """Abort the connection now: drop unsent bytes rather than wait for the client."""
        if self.cut_reason is not None:
            return
        self.cut_reason = reason
        self.closing = True
        log.info("cut a WebSocket: %s", reason)
        if self.transport is not None:
            self.transport.abort()

    async def _on_frame(self, data: bytes, received: float) -> None:
        self.metrics.frames_in.labels("ws").inc()
        try:
            header, image = protocol.parse_frame(data)
        except protocol.BadMessage as exc:
            self.rate.allow()
            self._strike()
            await self._send(None, protocol.error(str(exc), protocol.BAD_MESSAGE))
            return
        self.metrics.observe_kind(header.is_crop)
        fid, face = header.frame_id, header.face_id
        within_rate = face is not None or self.rate.allow()  # (a face's: checked below)
        if len(image) > self.max_frame_bytes:
            self._strike()
            await self._send(fid, protocol.error(
                f"frame of {len(image)} bytes exceeds max_frame_bytes {self.max_frame_bytes}",
                protocol.TOO_LARGE), face)
            return
        if not image:
            self._strike()
            await self._send(fid, protocol.error("frame has a header but no image",
                                                 protocol.BAD_IMAGE), face)
            return
        if self.closing:
            await self._send(fid, protocol.dropped(protocol.SHUTTING_DOWN), face)
            return
        lane = self._lane(face, received)
        if lane is None:
            await self._send(fid, protocol.dropped(protocol.OVERLOADED), face)
            return
        # A face's frames have its own rate budget; frames naming no face share the
        # connection's with its pings.
        if not (within_rate if face is None else lane.rate.allow()):
            await self._send(fid, protocol.dropped(protocol.RATE_LIMITED), face)
            return
        frame = Frame(fid, image, header.is_crop, received, face)
        run_now, superseded = lane.gate.offer(frame)
        if superseded is not None:
            await self._send(superseded.frame_id, protocol.dropped(protocol.SUPERSEDED), face)
        if run_now:
            lane.worker = asyncio.get_running_loop().create_task(self._work(lane, frame))

    def _lane(self, face: int | None, now: float) -> FaceLane | None:
        """The face's lane; a new face takes a free slot, else that of the least recently
        used face with nothing in flight; None when every slot is busy."""
        lane = self.lanes.get(face)
        if lane is None:
            named = [k for k in self.lanes if k is not None]
            if face is not None and len(named) >= protocol.MAX_FACES:
                idle = [k for k in named if not self.lanes[k].gate.busy]
                if not idle:
                    return None
                del self.lanes[min(idle, key=lambda k: self.lanes[k].used)]
            lane = self.lanes[face] = FaceLane(self.max_fps)
        lane.used = now
        return lane

    async def _work(self, lane: FaceLane, frame: Frame | None) -> None:
        """Run one face's frames through the pipeline one at a time while its gate has any."""
        while frame is not None:
            try:
                body = await self.pipeline.run(frame.image, is_crop=frame.is_crop,
                                               received=frame.received, track=self.track)
            except Exception:  # the pipeline answers every known failure itself
                log.exception("frame %d failed", frame.frame_id)
                body = protocol.error("internal server error", protocol.INTERNAL)
            await self._send(frame.frame_id, body, frame.face_id)
            frame = lane.gate.done()

    async def _send(self, frame_id: int | None, body: dict[str, Any],
                    face_id: int | None = None) -> None:
        self.metrics.observe_reply(body)
        if self.ws.closed or self.cut_reason is not None:
            return
        await self._write(self.ws.send_json(protocol.result(frame_id, body, face_id)), "reply")

    async def shut_down(self, timeout: float) -> None:
        """Server shutdown: tell the client (protocol.closing: send no more), answer the
        waiting frame, let the one in flight finish, answer every frame read meanwhile
        (dropped/shutting_down), then close 1001. The caller bounds the whole (see
        app.close_streams); a client that does not read is cut."""
        if self._shut_down:
            return
        self._shut_down = True
        self.closing = True
        noticed = time.monotonic()
        if not self.ws.closed and self.cut_reason is None:
            await self._write(self.ws.send_json(protocol.closing()), "closing notice")
        for lane in list(self.lanes.values()):
            waiting = lane.gate.take_waiting()
            if waiting is not None:
                await self._send(waiting.frame_id, protocol.dropped(protocol.SHUTTING_DOWN),
                                 waiting.face_id)
        running = [lane.worker for lane in self.lanes.values()
                   if lane.worker is not None and not lane.worker.done()]
        if running:
            _, late = await asyncio.wait([asyncio.shield(w) for w in running], timeout=timeout)
            if late:
                log.warning("%d frames were still in flight after %.1f s of shutdown",
                            len(late), timeout)
        # Close only once the reader has answered everything it has read (it is parked on
        # an empty queue: close() synchronously marks the socket closed, so a frame read after
        # that could no longer be answered) and no frame has come for CROSSING_S since the
        # notice (frames the client sent before reading it).
        until = time.monotonic() + min(1.0, timeout)
        while not self.ws.closed and (now := time.monotonic()) < until:
            if not self._parked.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._parked.wait(), until - now)
                continue
            quiet_at = max(noticed, self._read_at) + CROSSING_S
            if now >= quiet_at:
                break
            await asyncio.sleep(min(quiet_at, until) - now)
        if not self.ws.closed and self.cut_reason is None:  # a reading client takes it at once
            await self._write(self.ws.close(code=WSCloseCode.GOING_AWAY,
                                            message=b"server shutting down"), "close frame",
                              timeout=min(self.timeouts.write, CLOSE_FRAME_S))

    async def _abandon(self) -> None:
        """The client is gone: nobody is left to answer, so stop its work."""
        self.closing = True
        running = []
        for lane in self.lanes.values():
            lane.gate.take_waiting()
            if lane.worker is not None and not lane.worker.done():
                lane.worker.cancel()
                running.append(lane.worker)
        if running:
            await asyncio.wait(running)


class _Sink(asyncio.Protocol):
    """Stands in for aiohttp's protocol on a connection being closed: drops what arrives,
    hands the end of the connection on."""

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # the client closed its side too: close

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.inner.connection_lost(exc)
