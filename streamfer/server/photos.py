"""/api/predict: one uploaded photo to its reply body, every face in it.

The stages are the streamed frame's (streamfer.server.pipeline): a decode process decodes it
(streamfer.server.photodecode: reduced-size JPEG decoding, EXIF orientation, HEIC), the
decode threads search it (PHOTO_SEARCH: the whole photo and its tiles, then with a
margin) and crop up to MAX_FACES faces, largest first, and the micro-batcher classifies them.
A photo is not announced to the batcher while it decodes, as a frame is: it joins the queue
only once it has faces, so uploads never hold slots or batches that streaming frames need.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamfer import protocol
from streamfer.detect import TIGHT_PAD
from streamfer.faces import Face, resize_square
from streamfer.imagecheck import PHOTO
from streamfer.server.batcher import Dropped, InferenceFailed, Ran
from streamfer.server.pipeline import Found, FramePipeline, SearchStep, attempt, scaled

MAX_FACES = 16  # faces answered per photo, largest first
# A photo's face search: the whole photo and its tiles at once (one batch already), then the
# whole photo with a margin (pipeline.FRAME_SEARCH is a frame's).
PHOTO_SEARCH = (SearchStep("whole+tiles"), SearchStep("whole", pad=TIGHT_PAD))


class PhotoPipeline:
    """Photos to reply bodies through a FramePipeline's decoder, finder threads and batcher;
    each photo has `deadline_s` from its arrival to its place in a batch."""

    def __init__(self, frames: FramePipeline, deadline_s: float) -> None:
        self.frames = frames
        self.deadline_s = deadline_s

    async def _found(self, data: bytes, is_crop: bool) -> Found:
        frames = self.frames
        pixels, scale, whole = await frames.decode(PHOTO, data)
        loop = asyncio.get_running_loop()
        if is_crop:  # ?crop=1: the photo is the face
            face = await loop.run_in_executor(frames.decode_pool, resize_square, pixels,
                                              frames.input_size)
            return Found([(Face(face, whole), None)], scale=scale)
        # A photo's tiles are one batch already: searched in a thread on every device.
        return await loop.run_in_executor(frames.decode_pool, frames.threaded.prepare, pixels,
                                          scale, None, PHOTO_SEARCH, MAX_FACES)

    async def run(self, data: bytes, *, is_crop: bool, received: float) -> dict[str, Any]:
        """Reply body for one photo (`received`: its arrival, time.monotonic()): a streamed
        frame's body for its largest face, plus `faces`, every face found, largest first."""
        frames = self.frames
        deadline = received + self.deadline_s
        if time.monotonic() > deadline:
            return protocol.dropped(protocol.DEADLINE)
        started = time.monotonic()
        found = await attempt(self._found(data, is_crop))
        if isinstance(found, dict):
            return found
        decoded = time.monotonic()
        decode_s = max(0.0, decoded - started - sum(found.seconds.values()))
        if not found.faces:
            return {**frames.no_face(found, decode_s, received, decoded), "faces": []}
        try:
            outcomes = await asyncio.gather(
                *(frames.batcher.submit(f.pixels, deadline=deadline) for f, _ in found.faces))
        except InferenceFailed as exc:
            return protocol.error(str(exc), protocol.INTERNAL)
        if isinstance(outcomes[0], Dropped):
            return protocol.dropped(outcomes[0].reason)
        body = frames.ok(found, outcomes[0], decode_s, received)
        body["faces"] = [
            {"box": scaled(f.box, found.scale), "score": None if s is None else round(s, 4),
             **({"probs": (p := frames.probs(o)), "top": max(p, key=p.__getitem__)}
                if isinstance(o, Ran) else {"status": protocol.DROPPED, "reason": o.reason})}
            for (f, s), o in zip(found.faces, outcomes, strict=True)]
        return body
