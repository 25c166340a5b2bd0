"""Frames -> faces with stable ids -> batched expression model -> timeline rows.

One loop for the command line and the server: detection and cropping run on the calling
thread (the server's job thread, never its event loop); face crops go to `infer` in chunks
of about `batch` faces, which returns a concurrent Future (the command line's inference
thread, or the server's micro-batcher), and at most `in_flight` chunks are unanswered at
once. What is held is those chunks' crops, never the video.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from streamfer.detect import (
    TIGHT_PAD,
    BlazeFace,
    Detection,
    HaarFallback,
    largest_first,
    track_region,
)
from streamfer.faces import Box, crop_face
from streamfer.track import IouTracker, iou
from streamfer.video.timeline import Row

log = logging.getLogger(__name__)

Infer = Callable[[np.ndarray], "Future[np.ndarray]"]  # N x S x S uint8 -> N x C probabilities


class Cancelled(RuntimeError):
    """The job was stopped (server shutdown, or its results were deleted)."""


@dataclass
class _Chunk:
    frames: list[tuple[int, float, list[tuple[int, Box]]]]  # (index, time, [(id, box)])
    future: Future[np.ndarray] | None


def find_faces(detector: BlazeFace | HaarFallback, gray: np.ndarray,
               tracker: IouTracker) -> list[Detection]:
    """The whole frame first (with a margin when it finds nothing: a face filling the
    picture), each face kept only where its mirror image confirms it, as on the live path
    (BlazeFace.confirm); then, for a face the tracker knows but the whole frame missed, the
    region around its last box (the live path's tracking search: the face is larger there)."""
    found = (detector.confirm(gray, detector.detect(gray))
             or detector.confirm(gray, detector.detect(gray, pad=TIGHT_PAD)))
    for track in tracker.tracks:
        if any(iou(d.box, track.box) >= tracker.min_iou for d in found):
            continue
        found += [d for d in detector.detect(gray, track_region(track.box))
                  if all(iou(d.box, f.box) < tracker.min_iou for f in found)][:1]
    return found


def analyse(frames: Iterable[tuple[int, float, np.ndarray]], *,
            detector: BlazeFace | HaarFallback, input_size: int, infer: Infer,
            emit: Callable[[Row], None], on_frame: Callable[[int], None] | None = None,
            batch: int = 32, in_flight: int = 2, max_faces: int = 4,
            cancelled: Callable[[], bool] = lambda: False) -> int:
    """Run every frame of `frames` through; `emit` gets the rows in frame order, `on_frame`
    each processed frame's index once its rows are out. Returns frames processed."""
    tracker = IouTracker()
    pending: deque[_Chunk] = deque()
    frames_meta: list[tuple[int, float, list[tuple[int, Box]]]] = []
    crops: list[np.ndarray] = []
    done = 0

    def finish(chunk: _Chunk) -> None:
        nonlocal done
        probs = chunk.future.result() if chunk.future is not None else np.empty((0, 0))
        k = 0
        for index, time_s, faces in chunk.frames:
            for face_id, box in faces:
                emit(Row(time_s, index, face_id, box, probs[k]))
                k += 1
            done += 1
            if on_frame is not None:
                on_frame(index)

    def flush() -> None:
        nonlocal frames_meta, crops
        if not frames_meta:
            return
        future = infer(np.stack(crops)) if crops else None
        pending.append(_Chunk(frames_meta, future))
        frames_meta, crops = [], []
        while len(pending) > in_flight:
            finish(pending.popleft())

    for index, time_s, gray in frames:
        if cancelled():
            raise Cancelled("stopped")
        found = largest_first(find_faces(detector, gray, tracker))[:max_faces]
        ids = tracker.update([d.box for d in found])
        frames_meta.append((index, time_s, list(zip(ids, (d.box for d in found),
                                                    strict=True))))
        crops += [crop_face(gray, d.box, input_size, detector.name) for d in found]
        if len(crops) >= batch or len(frames_meta) >= batch:
            flush()
    flush()
    while pending:
        finish(pending.popleft())
    return done
