"""One WebSocket connection: read frames, answer each exactly once, never block the reader.

Every binary message gets one JSON reply (result/ok, no_face, dropped or error); a message
with no readable header gets an error with `"id": null`. The reader never waits for the
model: it hands a frame to the connection's LatestGate and reads on, so a newer frame can
supersede one still waiting while the previous one is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from streamfer import protocol
from streamfer.flow import LatestGate, RateLimiter
from streamfer.metrics import Metrics
from streamfer.pipeline import FaceTrack, FramePipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    frame_id: int
    image: bytes
    is_crop: bool
    received: float  # time.monotonic() when its message was read


class FrameStream:
    def __init__(self, ws: web.WebSocketResponse, pipeline: FramePipeline, metrics: Metrics,
                 *, max_frame_bytes: int, max_fps: float) -> None:
        self.ws = ws
        self.pipeline = pipeline
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.gate: LatestGate[Frame] = LatestGate()
        self.rate = RateLimiter(max_fps)
        self.track = FaceTrack()  # where this connection's face was last seen
        self.closing = False
        self._worker: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        """Read messages until the client leaves or the server closes the socket."""
        try:
            async for msg in self.ws:
                received = time.monotonic()
                if msg.type is WSMsgType.BINARY:
                    await self._on_frame(msg.data, received)
                elif msg.type is WSMsgType.TEXT:
                    self.metrics.frames_in.labels("ws").inc()
                    await self._send(None, protocol.error(
                        "text message ignored: a frame is a binary message (8-byte header, "
                        "then a JPEG/PNG image)", protocol.BAD_MESSAGE))
                elif msg.type is WSMsgType.ERROR:
                    log.info("websocket closed on error: %s", self.ws.exception())
        finally:
            await self._abandon()

    async def _on_frame(self, data: bytes, received: float) -> None:
        self.metrics.frames_in.labels("ws").inc()
        try:
            header, image = protocol.parse_frame(data)
        except protocol.BadMessage as exc:
            await self._send(None, protocol.error(str(exc), protocol.BAD_MESSAGE))
            return
        fid = header.frame_id
        if len(image) > self.max_frame_bytes:
            await self._send(fid, protocol.error(
                f"frame of {len(image)} bytes exceeds max_frame_bytes {self.max_frame_bytes}",
                protocol.TOO_LARGE))
        elif not image:
            await self._send(fid, protocol.error("frame has a header but no image",
                                                 protocol.BAD_IMAGE))
        elif self.closing:
            await self._send(fid, protocol.dropped(protocol.SHUTTING_DOWN))
        elif not self.rate.allow():
            await self._send(fid, protocol.dropped(protocol.RATE_LIMITED))
        else:
            frame = Frame(fid, image, header.is_crop, received)
            run_now, superseded = self.gate.offer(frame)
            if superseded is not None:
                await self._send(superseded.frame_id, protocol.dropped(protocol.SUPERSEDED))
            if run_now:
                self._worker = asyncio.get_running_loop().create_task(self._work(frame))

    async def _work(self, frame: Frame | None) -> None:
        """Run frames through the pipeline one at a time while the gate has any."""
        while frame is not None:
            try:
                body = await self.pipeline.run(frame.image, is_crop=frame.is_crop,
                                               received=frame.received, track=self.track)
            except Exception:  # the pipeline answers every known failure itself
                log.exception("frame %d failed", frame.frame_id)
                body = protocol.error("internal server error", protocol.INTERNAL)
            await self._send(frame.frame_id, body)
            frame = self.gate.done()

    async def _send(self, frame_id: int | None, body: dict[str, Any]) -> None:
        self.metrics.observe_reply(body)
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionResetError):
            await self.ws.send_json(protocol.result(frame_id, body))

    async def shut_down(self, timeout: float) -> None:
        """Server shutdown: answer the waiting frame, let the one in flight finish, close 1001."""
        self.closing = True
        waiting = self.gate.take_waiting()
        if waiting is not None:
            await self._send(waiting.frame_id, protocol.dropped(protocol.SHUTTING_DOWN))
        if self._worker is not None and not self._worker.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except asyncio.TimeoutError:
                log.warning("a frame was still in flight after %.1f s of shutdown", timeout)
        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def _abandon(self) -> None:
        """The client is gone: nobody is left to answer, so stop its work."""
        self.closing = True
        self.gate.take_waiting()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.wait([self._worker])
