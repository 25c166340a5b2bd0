"""One streamed frame from encoded bytes to its reply body (/ws); /api/predict's photos take
the same stages through streamfer.server.photos.

Every image is checked and decoded in a decode process (streamfer.server.decoder: bounded by
its entry point's ImageLimits and a time budget, killed when its caller goes), never on the
event loop -- except a crop whose cost is bounded by construction (decoder.decode_inline: a
tiny baseline JPEG, fully walked first). A crop comes back as the model-ready face; a full
frame as grayscale, searched for faces (the steps of FRAME_SEARCH) by the finder chosen at
start-up: in a thread pool (OpenCV and torch release the GIL; the event loop must keep reading
sockets), or with the detector's passes in a batched stage on the GPU. Then the face joins the
micro-batcher's queue. Whatever happens, the caller gets exactly one reply body (protocol.ok /
no_face / dropped / error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamfer import protocol
from streamfer.detect import (
    TIGHT_PAD,
    BlazeFace,
    Detection,
    DetectorUnavailable,
    HaarFallback,
    largest_first,
    track_region,
)
from streamfer.faces import (
    BadImage,
    Box,
    Face,
    crop_face,
)
from streamfer.imagecheck import CROP, FRAME, ImageLimits
from streamfer.server.batcher import Dropped, InferenceFailed, MicroBatcher, Ran, Stage
from streamfer.server.decoder import Abandoned, DecodePool, decode_inline

log = logging.getLogger(__name__)

Detector = BlazeFace | HaarFallback


@dataclass(frozen=True)
class SearchStep:
    """One step of a face search: which view of the image the detector looks at, with what
    margin, and whether a face found counts only where the mirrored image confirms it
    (detect.BlazeFace.confirm). `timing` is the reply's timings key it is counted under."""

    view: str  # "track": the region around the connection's last face (skipped without one);
    #            "whole": the whole image; "tiles": tiles of half its size;
    #            "whole+tiles": both in one batch
    timing: str = "detect"
    pad: float = 0.0
    confirm: bool = True


# A frame's face search, first step that finds a face wins: the tracking region (a face the
# mirror check confirmed in an earlier frame), the whole frame, its tiles (faces too small for
# the detector's input at the whole frame's scale: a face across an eighth of a 640 px frame),
# then the whole frame with a margin (an image that is all face has no room for a box).
FRAME_SEARCH = (SearchStep("track", timing="track", confirm=False), SearchStep("whole"),
                SearchStep("tiles"), SearchStep("whole", pad=TIGHT_PAD))

@dataclass
class FaceTrack:
    """One connection's memory of where its face was: the next frame is searched first in a
    region around it (streamfer.detect.track_region), the whole frame only if that fails.
    Owned by the connection (streamfer.server.stream.FrameStream); frames of one connection run
    one at a time, so it needs no lock."""

    box: Box | None = None


@dataclass
class Found:
    """What the decode stage hands on: model-ready faces (largest first) and stage times."""

    faces: list[tuple[Face, float | None]] = field(default_factory=list)  # (face, score)
    seconds: dict[str, float] = field(default_factory=dict)
    scale: int = 1  # boxes are in decoded pixels; x scale = the sender's pixels

    def timed(self, timing: str, since: float) -> None:
        """Adds the time from `since` (time.monotonic()) to now to stage `timing`."""
        self.seconds[timing] = self.seconds.get(timing, 0.0) + time.monotonic() - since


def runnable(plan: tuple[SearchStep, ...], track: FaceTrack | None) -> Iterator[SearchStep]:
    """`plan`'s steps that can run on this frame: one around the track needs a tracked box."""
    return (step for step in plan
            if step.view != "track" or (track is not None and track.box is not None))


DetectBatcher = MicroBatcher[np.ndarray, tuple[np.ndarray, np.ndarray]]


class ThreadedFinder:
    """Runs a face search and crops the faces in a decode thread (the CPU default, and any
    search whose passes are one batch already)."""

    def __init__(self, detector: Detector, pool: Executor, input_size: int) -> None:
        self.detector = detector
        self.pool = pool
        self.input_size = input_size

    def detections(self, gray: np.ndarray, step: SearchStep,
                   track: FaceTrack | None) -> list[Detection]:
        """What one step finds (in the calling thread)."""
        det = self.detector
        if step.view == "track":
            found = det.detect(gray, track_region(track.box)) if track and track.box else []
        elif step.view == "tiles":
            found = det.detect_photo(gray, whole=False)
        elif step.view == "whole+tiles":
            found = det.detect_photo(gray)
        else:
            found = det.detect(gray, pad=step.pad)
        return det.confirm(gray, found) if found and step.confirm else found

    def faces(self, gray: np.ndarray, found: list[Detection], limit: int) -> list[
            tuple[Face, float | None]]:
        """The `limit` largest detections cropped as the model's faces, with their scores."""
        return [(Face(crop_face(gray, d.box, self.input_size, self.detector.name), d.box),
                 d.score) for d in largest_first(found)[:limit]]

    def prepare(self, gray: np.ndarray, scale: int, track: FaceTrack | None,
                plan: tuple[SearchStep, ...], limit: int) -> Found:
        """Search (`plan`'s steps, the first that finds a face ends it) and crop, in one
        thread."""
        out = Found(scale=scale)
        found: list[Detection] = []
        for step in runnable(plan, track):
            t = time.monotonic()
            found = self.detections(gray, step, track)
            out.timed(step.timing, t)
            if found:
                break
        out.faces = self.faces(gray, found, limit)
        return out

    async def find(self, gray: np.ndarray, scale: int, track: FaceTrack | None,
                   deadline: float, plan: tuple[SearchStep, ...] = FRAME_SEARCH,
                   limit: int = 1) -> Found | Dropped:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self.prepare, gray, scale, track, plan, limit)


class BatchedFinder:
    """The GPU path (given a detect batcher): the detector's passes over the track region and
    the whole frame run in the batched stage before the expression model, so decode threads
    only letterbox the frames, decode the boxes, check the mirror and search tiles."""

    def __init__(self, threaded: ThreadedFinder, detect_batcher: DetectBatcher) -> None:
        assert isinstance(threaded.detector, BlazeFace)
        self.threaded = threaded
        self.detector: BlazeFace = threaded.detector
        self.detect_batcher = detect_batcher

    async def _batched(self, gray: np.ndarray, region: tuple[int, int, int] | None,
                       pad: float, deadline: float) -> list[Detection] | Dropped:
        x, where = self.detector.prepare(gray, region, pad)
        ran = await self.detect_batcher.submit(x, deadline=deadline)
        if isinstance(ran, Dropped):
            return ran
        regress, scores = ran.value
        return self.detector.decode(regress, scores, where, gray.shape[:2])

    async def find(self, gray: np.ndarray, scale: int, track: FaceTrack | None,
                   deadline: float, plan: tuple[SearchStep, ...] = FRAME_SEARCH,
                   limit: int = 1) -> Found | Dropped:
        loop = asyncio.get_running_loop()
        pool = self.threaded.pool
        out = Found(scale=scale)
        found: list[Detection] = []
        for step in runnable(plan, track):
            t = time.monotonic()
            if step.view in ("tiles", "whole+tiles"):  # many small passes: in a thread
                got = await loop.run_in_executor(pool, self.threaded.detections, gray, step,
                                                 track)
            else:
                region = track_region(track.box) if step.view == "track" and track and \
                    track.box else None
                got = await self._batched(gray, region, step.pad, deadline)
                if isinstance(got, Dropped):
                    return got
                if got and step.confirm:
                    got = await loop.run_in_executor(pool, self.detector.confirm, gray, got)
            out.timed(step.timing, t)
            if got:
                found = got
                break
        out.faces = await loop.run_in_executor(pool, self.threaded.faces, gray, found, limit)
        return out


Finder = ThreadedFinder | BatchedFinder


async def attempt(work: Awaitable[Found | Dropped]) -> Found | dict[str, Any]:
    """`work`'s faces, or the reply body that says why there are none to classify: a bad
    image, no detector, the server closing, the stage dropped it, or an internal error."""
    try:
        found = await work
    except BadImage as exc:
        return protocol.error(str(exc), protocol.BAD_IMAGE)
    except DetectorUnavailable as exc:
        return protocol.error(str(exc), protocol.NO_DETECTOR)
    except Abandoned:  # the server is closing its decoders
        return protocol.dropped(protocol.SHUTTING_DOWN)
    except Exception:
        log.exception("preprocessing failed")
        return protocol.error("internal error while decoding the image", protocol.INTERNAL)
    if isinstance(found, Dropped):
        return protocol.dropped(found.reason)
    return found


class FramePipeline:
    """Streamed frames to reply bodies. The face search runs in the decode threads (the CPU
    default), or, given `detect_batcher` (CUDA), with its detector passes as a batched stage
    on the GPU before the expression model: chosen here, once (`finder`)."""

    def __init__(self, *, batcher: Stage,
                 classes: list[str], input_size: int, decoder: DecodePool,
                 decode_pool: Executor, detector: Detector, deadline_s: float,
                 detect_batcher: DetectBatcher | None = None) -> None:
        self.batcher = batcher
        self.decoder = decoder
        self.classes = classes
        self.input_size = input_size
        self.decode_pool = decode_pool
        self.detector = detector
        self.deadline_s = deadline_s
        self.threaded = ThreadedFinder(detector, decode_pool, input_size)
        self.finder: Finder = (self.threaded if detect_batcher is None
                               else BatchedFinder(self.threaded, detect_batcher))

    async def decode(self, kind: ImageLimits, data: bytes) -> tuple[np.ndarray, int, Box]:
        """(pixels, the image's DCT reduction factor, the whole decoded image as a box); a
        CROP comes back as the model-ready face (decoded inline where that is cheap)."""
        out = decode_inline(data, self.input_size) if kind is CROP else None
        if out is None:
            out = await self.decoder.decode(kind.name, data)
        return out.pixels, out.scale, Box(0, 0, *out.size)

    async def _found(self, data: bytes, is_crop: bool, track: FaceTrack | None,
                     deadline: float) -> Found | Dropped:
        """Decode (a decode process), then for a frame find its face (the finder)."""
        pixels, scale, whole = await self.decode(CROP if is_crop else FRAME, data)
        if is_crop:
            return Found([(Face(pixels, whole), None)], scale=scale)
        return await self.finder.find(pixels, scale, track, deadline)

    def no_face(self, found: Found, decode_s: float, received: float,
                decoded: float) -> dict[str, Any]:
        """The no_face body, with the decoding and the search's stages timed."""
        return protocol.no_face(timings_ms=protocol.timings(
            decode=decode_s, **found.seconds, total=decoded - received))

    def ok(self, found: Found, outcome: Ran[np.ndarray], decode_s: float,
           received: float) -> dict[str, Any]:
        """The ok body for the first (largest) face of `found`."""
        return protocol.ok(
            box=scaled(found.faces[0][0].box, found.scale), probs=self.probs(outcome),
            batch=outcome.batch,
            timings_ms=protocol.timings(decode=decode_s, **found.seconds,
                                        queue=outcome.queue_s, inference=outcome.inference_s,
                                        total=time.monotonic() - received))

    async def run(self, data: bytes, *, is_crop: bool, received: float,
                  track: FaceTrack | None = None, deadline_s: float | None = None
                  ) -> dict[str, Any]:
        """Reply body for one frame; `received` is its arrival time (time.monotonic()).
        `track`: the connection's FaceTrack, updated with this frame's face; `deadline_s`:
        its own deadline after `received` (default: the streaming one)."""
        deadline = received + (self.deadline_s if deadline_s is None else deadline_s)
        if time.monotonic() > deadline:  # it waited behind a slow frame for too long
            return protocol.dropped(protocol.DEADLINE)
        # A frame announces its face to the batcher while it decodes (the forming batch
        # waits for it; under --inference-worker that holds a shared-memory slot).
        with self.batcher.expecting() as slot:
            started = time.monotonic()
            found = await attempt(self._found(data, is_crop, track, deadline))
            if isinstance(found, dict):
                return found
            decoded = time.monotonic()
            if track is not None and not is_crop:
                track.box = found.faces[0][0].box if found.faces else None
            # `decode` is the decoding alone: the face search's stages are timed on their own
            decode_s = max(0.0, decoded - started - sum(found.seconds.values()))
            if not found.faces:
                return self.no_face(found, decode_s, received, decoded)
            try:
                outcome = await slot.submit(found.faces[0][0].pixels, deadline=deadline)
            except InferenceFailed as exc:
                return protocol.error(str(exc), protocol.INTERNAL)
        if isinstance(outcome, Dropped):
            return protocol.dropped(outcome.reason)
        return self.ok(found, outcome, decode_s, received)

    def probs(self, outcome: Ran[np.ndarray]) -> dict[str, float]:
        """A face's probabilities by class name, rounded for the reply."""
        return {c: round(float(p), 5) for c, p in zip(self.classes, outcome.value, strict=True)}


def scaled(box: Box, scale: int) -> list[int]:
    """A box in decoded pixels -> [x, y, w, h] in the sender's (upright) pixels."""
    return [v * scale for v in box.to_list()]
