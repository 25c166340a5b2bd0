"""One frame from encoded bytes to its reply body, shared by /ws and /api/predict.

Every image is checked and decoded in a decode process (streamfer.server.decoder: bounded by
its entry point's ImageLimits and a time budget, killed when its caller goes), never on the
event loop -- except a crop whose cost is bounded by construction (decoder.decode_inline: a
tiny baseline JPEG, fully walked first). A crop comes back as the model-ready face; a full
frame or photo as grayscale, searched for faces in a thread pool (OpenCV and torch release
the GIL; the event loop must keep reading sockets). Then the face joins the micro-batcher's
queue. Whatever happens, the caller gets exactly one reply body (protocol.ok / no_face /
dropped / error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streamfer import protocol
from streamfer.detect import (
    TIGHT_PAD,
    BlazeFace,
    Detection,
    HaarFallback,
    largest_first,
    track_region,
)
from streamfer.faces import (
    BadImage,
    Box,
    DetectorUnavailable,
    Face,
    crop_face,
    resize_square,
)
from streamfer.imagecheck import CROP, FRAME, PHOTO
from streamfer.server.batcher import Dropped, InferenceFailed, MicroBatcher, Ran
from streamfer.server.decoder import Abandoned, DecodePool, decode_inline

if TYPE_CHECKING:
    from streamfer.server.inference_worker import WorkerClient

log = logging.getLogger(__name__)

MAX_FACES = 16  # faces answered per photo on /api/predict, largest first
Detector = BlazeFace | HaarFallback

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


DetectBatcher = MicroBatcher[np.ndarray, tuple[np.ndarray, np.ndarray]]


class FramePipeline:
    """Frames and photos to reply bodies. Detection runs in the decode threads (the CPU
    default), or, given `detect_batcher` (CUDA), as a batched stage on the GPU before the
    expression model: decode threads only letterbox the frames and decode the boxes."""

    def __init__(self, *, batcher: MicroBatcher[np.ndarray, np.ndarray] | WorkerClient,
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
        self.detect_batcher = detect_batcher

    async def _decode(self, data: bytes, is_crop: bool, photo: bool) -> tuple[np.ndarray,
                                                                                int, Box]:
        """(pixels, the photo's DCT reduction factor, the whole decoded image as a box); a crop
        (not a photo) comes back as the model-ready face."""
        kind = PHOTO if photo else CROP if is_crop else FRAME
        out = decode_inline(data, self.input_size) if kind is CROP else None
        if out is None:
            out = await self.decoder.decode(kind.name, data)
        return out.pixels, out.scale, Box(0, 0, *out.size)

    def _faces(self, gray: np.ndarray, found: list[Detection], limit: int) -> list[
            tuple[Face, float | None]]:
        return [(Face(crop_face(gray, d.box, self.input_size, self.detector.name), d.box),
                 d.score) for d in largest_first(found)[:limit]]

    def _search(self, gray: np.ndarray, track: FaceTrack | None,
                seconds: dict[str, float], photo: bool = False) -> list[Detection]:
        """Tracking region first (a face the mirror check confirmed in an earlier frame),
        then, each stage's faces only where the mirrored image confirms them
        (detect.BlazeFace.confirm), the whole frame, then (a photo: at once) in tiles of
        half its size, for faces too small for the detector's input at the whole frame's
        scale (a face across an eighth of a 640 px frame), then the whole frame with a
        margin (an image that is all face, with no margin, has no room for a detector's
        box)."""
        det = self.detector
        if photo:
            t = time.monotonic()
            found = (det.confirm(gray, det.detect_photo(gray))
                     or det.confirm(gray, det.detect(gray, pad=TIGHT_PAD)))
            seconds["detect"] = time.monotonic() - t
            return found
        if track is not None and track.box is not None:
            t = time.monotonic()
            found = det.detect(gray, track_region(track.box))
            seconds["track"] = time.monotonic() - t
            if found:
                return found
        t = time.monotonic()
        found = (det.confirm(gray, det.detect(gray))
                 or self._tiles(gray)
                 or det.confirm(gray, det.detect(gray, pad=TIGHT_PAD)))
        seconds["detect"] = time.monotonic() - t
        return found

    def _prepare(self, gray: np.ndarray, scale: int, photo: bool, track: FaceTrack | None
                 ) -> Found:
        """Detect + crop a decoded frame or photo, in one thread (the CPU path)."""
        out = Found(scale=scale)
        found = self._search(gray, track, out.seconds, photo)
        out.faces = self._faces(gray, found, MAX_FACES if photo else 1)
        return out

    def _tiles(self, gray: np.ndarray) -> list[Detection]:
        """A frame's confirmed faces in tiles of half its size (its whole-image search found
        none); both the threaded and the batched search call it."""
        return self.detector.confirm(gray, self.detector.detect_photo(gray, whole=False))

    async def _detect_batched(self, gray: np.ndarray, region: tuple[int, int, int] | None,
                              pad: float, deadline: float) -> list[Detection] | Dropped:
        assert self.detect_batcher is not None and isinstance(self.detector, BlazeFace)
        x, where = self.detector.prepare(gray, region, pad)
        ran = await self.detect_batcher.submit(x, deadline=deadline)
        if isinstance(ran, Dropped):
            return ran
        regress, scores = ran.value
        return self.detector.decode(regress, scores, where, gray.shape[:2])

    async def _prepare_batched(self, gray: np.ndarray, scale: int, photo: bool,
                               track: FaceTrack | None, deadline: float) -> Found | Dropped:
        """The GPU path: detect in the batched stage, crop in a thread."""
        loop = asyncio.get_running_loop()
        if photo:  # a photo's tiles are one batch already
            return await loop.run_in_executor(self.decode_pool, self._prepare, gray, scale,
                                              photo, None)
        out = Found(scale=scale)
        attempts: list[tuple[str, tuple[int, int, int] | None, float]] = []
        if track is not None and track.box is not None:
            attempts.append(("track", track_region(track.box), 0.0))
        attempts += [("detect", None, 0.0), ("detect", None, TIGHT_PAD)]
        found: list[Detection] = []
        for stage, region, pad in attempts:
            t = time.monotonic()
            got = await self._detect_batched(gray, region, pad, deadline)
            out.seconds[stage] = out.seconds.get(stage, 0.0) + time.monotonic() - t
            if isinstance(got, Dropped):
                return got
            if got and stage != "track":
                t = time.monotonic()
                got = await loop.run_in_executor(self.decode_pool, self.detector.confirm,
                                                 gray, got)
                out.seconds[stage] += time.monotonic() - t
            if got:
                found = got
                break
            if stage == "detect" and not pad:  # the whole frame found none: its tiles next
                t = time.monotonic()
                found = await loop.run_in_executor(self.decode_pool, self._tiles, gray)
                out.seconds[stage] += time.monotonic() - t
                if found:
                    break
        out.faces = await loop.run_in_executor(self.decode_pool, self._faces, gray, found, 1)
        return out

    async def _found(self, data: bytes, is_crop: bool, photo: bool, track: FaceTrack | None,
                     deadline: float) -> Found | Dropped:
        """Decode (a decode process), then for a frame or photo find its faces (threads or
        the batched stage)."""
        loop = asyncio.get_running_loop()
        pixels, scale, whole = await self._decode(data, is_crop, photo)
        if is_crop and not photo:
            return Found([(Face(pixels, whole), None)], scale=scale)
        if is_crop:  # ?crop=1 on /api/predict: the photo is the face
            face = await loop.run_in_executor(self.decode_pool, resize_square, pixels,
                                              self.input_size)
            return Found([(Face(face, whole), None)], scale=scale)
        if self.detect_batcher is not None:
            return await self._prepare_batched(pixels, scale, photo, track, deadline)
        return await loop.run_in_executor(self.decode_pool, self._prepare, pixels, scale,
                                          photo, track)

    async def run(self, data: bytes, *, is_crop: bool, received: float, photo: bool = False,
                  track: FaceTrack | None = None, deadline_s: float | None = None
                  ) -> dict[str, Any]:
        """Reply body for one image; `received` is its arrival time (time.monotonic()).
        `photo`: an uploaded photo (reduced decoding, EXIF orientation, every face);
        `track`: the connection's FaceTrack, updated with this frame's face; `deadline_s`:
        its own deadline after `received` (default: the streaming one)."""
        deadline = received + (self.deadline_s if deadline_s is None else deadline_s)
        if time.monotonic() > deadline:  # it waited behind a slow frame for too long
            return protocol.dropped(protocol.DEADLINE)
        # A frame announces its face to the batcher while it decodes (the forming batch
        # waits for it; under --inference-worker that holds a shared-memory slot). A photo
        # does not: it joins only once it has a face, so uploads never hold slots or batches
        # that streaming frames need.
        with (self.batcher.expecting() if not photo else _Unannounced(self.batcher)) as slot:
            started = time.monotonic()
            try:
                found = await self._found(data, is_crop, photo, track, deadline)
            except BadImage as exc:
                return protocol.error(str(exc), protocol.BAD_IMAGE)
            except DetectorUnavailable as exc:
                return protocol.error(str(exc), protocol.NO_DETECTOR)
            except Abandoned:  # the server is closing its decoders
                return protocol.dropped(protocol.SHUTTING_DOWN)
            except Exception:
                log.exception("preprocessing failed")
                return protocol.error("internal error while decoding the image",
                                      protocol.INTERNAL)
            if isinstance(found, Dropped):
                return protocol.dropped(found.reason)
            decoded = time.monotonic()
            if track is not None and not is_crop:
                track.box = found.faces[0][0].box if found.faces else None
            # `decode` is the decoding alone: the face search's stages are timed on their own
            decode_s = max(0.0, decoded - started - sum(found.seconds.values()))
            if not found.faces:
                body = protocol.no_face(timings_ms=protocol.timings(
                    decode=decode_s, **found.seconds, total=decoded - received))
                if photo:
                    body["faces"] = []
                return body
            (first, _), rest = found.faces[0], found.faces[1:]
            try:
                if rest:
                    outcomes = await asyncio.gather(
                        slot.submit(first.pixels, deadline=deadline),
                        *(self.batcher.submit(f.pixels, deadline=deadline) for f, _ in rest))
                else:  # a frame's one face: no gather (a task and a future less per frame)
                    outcomes = [await slot.submit(first.pixels, deadline=deadline)]
            except InferenceFailed as exc:
                return protocol.error(str(exc), protocol.INTERNAL)
        outcome = outcomes[0]
        if isinstance(outcome, Dropped):
            return protocol.dropped(outcome.reason)
        body = protocol.ok(
            box=_scaled(first.box, found.scale), probs=self._probs(outcome), batch=outcome.batch,
            timings_ms=protocol.timings(decode=decode_s, **found.seconds,
                                        queue=outcome.queue_s, inference=outcome.inference_s,
                                        total=time.monotonic() - received))
        if photo:
            body["faces"] = [
                {"box": _scaled(f.box, found.scale), "score": None if s is None else round(s, 4),
                 **({"probs": (p := self._probs(o)), "top": max(p, key=p.__getitem__)}
                    if isinstance(o, Ran) else {"status": "dropped", "reason": o.reason})}
                for (f, s), o in zip(found.faces, outcomes, strict=True)]
        return body

    def _probs(self, outcome: Ran[np.ndarray]) -> dict[str, float]:
        return {c: round(float(p), 5) for c, p in zip(self.classes, outcome.value, strict=True)}


class _Unannounced:
    """`batcher.expecting()`'s stand-in for a face not announced: submit joins the queue."""

    def __init__(self, batcher: Any) -> None:
        self.batcher = batcher

    def __enter__(self) -> _Unannounced:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    async def submit(self, item: np.ndarray, *, deadline: float | None = None) -> Any:
        return await self.batcher.submit(item, deadline=deadline)


def _scaled(box: Box, scale: int) -> list[int]:
    """A box in decoded pixels -> [x, y, w, h] in the sender's (upright) pixels."""
    return [v * scale for v in box.to_list()]
