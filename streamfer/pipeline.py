"""One frame from encoded bytes to its reply body, shared by /ws and /api/predict.

decode + face detection run in a thread pool (OpenCV releases the GIL; the event loop must
keep reading sockets), then the face joins the micro-batcher's queue. Whatever happens, the
caller gets exactly one reply body (protocol.ok / no_face / dropped / error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any

import cv2
import numpy as np

from streamfer import protocol
from streamfer.batcher import Dropped, InferenceFailed, MicroBatcher
from streamfer.faces import BadImage, DetectorUnavailable, Face, FaceDetector, prepare
from streamfer.imagecheck import check_image

log = logging.getLogger(__name__)

class FramePipeline:
    def __init__(self, *, batcher: MicroBatcher[np.ndarray, np.ndarray], classes: list[str],
                 input_size: int, decode_pool: Executor, detector: FaceDetector,
                 deadline_s: float) -> None:
        self.batcher = batcher
        self.classes = classes
        self.input_size = input_size
        self.decode_pool = decode_pool
        self.detector = detector
        self.deadline_s = deadline_s

    def _prepare(self, data: bytes, is_crop: bool) -> Face | None:
        check_image(data)  # before OpenCV allocates anything: refuses decompression bombs
        try:
            return prepare(data, is_crop=is_crop, size=self.input_size, detector=self.detector)
        except cv2.error as exc:  # OpenCV's own complaint about a malformed image
            raise BadImage(f"not a decodable JPEG/PNG image ({exc.msg.strip()})") from None

    async def run(self, data: bytes, *, is_crop: bool, received: float) -> dict[str, Any]:
        """Reply body for one image; `received` is its arrival time (time.monotonic())."""
        deadline = received + self.deadline_s
        if time.monotonic() > deadline:  # it waited behind a slow frame for too long
            return protocol.dropped(protocol.DEADLINE)
        loop = asyncio.get_running_loop()
        with self.batcher.expecting() as slot:
            started = time.monotonic()
            try:
                face = await loop.run_in_executor(self.decode_pool, self._prepare, data, is_crop)
            except BadImage as exc:
                return protocol.error(str(exc), protocol.BAD_IMAGE)
            except DetectorUnavailable as exc:
                return protocol.error(str(exc), protocol.NO_DETECTOR)
            except Exception:
                log.exception("preprocessing failed")
                return protocol.error("internal error while decoding the image",
                                      protocol.INTERNAL)
            decoded = time.monotonic()
            if face is None:
                return protocol.no_face(timings_ms=protocol.timings(
                    decode=decoded - started, total=decoded - received))
            try:
                outcome = await slot.submit(face.pixels, deadline=deadline)
            except InferenceFailed as exc:
                return protocol.error(str(exc), protocol.INTERNAL)
        if isinstance(outcome, Dropped):
            return protocol.dropped(outcome.reason)
        probs = {c: round(float(p), 5) for c, p in zip(self.classes, outcome.value, strict=True)}
        return protocol.ok(
            box=face.box.to_list(), probs=probs, batch=outcome.batch,
            timings_ms=protocol.timings(decode=decoded - started, queue=outcome.queue_s,
                                        inference=outcome.inference_s,
                                        total=time.monotonic() - received))
