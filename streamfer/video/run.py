"""One video through analyse() into its timeline files: shared by the command line and the
server's video jobs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamfer.detect import BlazeFace, HaarFallback
from streamfer.video.analyse import Infer, analyse
from streamfer.video.decode import Limits, VideoInfo, frames
from streamfer.video.timeline import TimelineWriter

if TYPE_CHECKING:
    import cv2


def expected_frames(info: VideoInfo, every: int, limits: Limits) -> int:
    """How many frames `every` will process, from the container's frame count."""
    return max(1, math.ceil(min(info.frames, int(limits.max_seconds * info.fps) + 1) / every))


def process(cap: cv2.VideoCapture, info: VideoInfo, out_dir: Path, *,
            detector: BlazeFace | HaarFallback, classes: list[str], input_size: int,
            infer: Infer, every: int, limits: Limits, smooth_ms: float, model: str,
            batch: int = 32, in_flight: int = 2, max_faces: int = 4,
            on_frame: Callable[[int], None] | None = None,
            cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Decode `cap` (from decode.open_video; released here), write the timeline files into
    `out_dir`, return the summary."""
    about = {"model": model, "video": info.to_json(), "every": every}
    writer = TimelineWriter(out_dir, classes, about)
    try:
        done = analyse(frames(cap, info, every, limits), detector=detector,
                       input_size=input_size, infer=infer, emit=writer.write,
                       on_frame=on_frame, batch=batch, in_flight=in_flight,
                       max_faces=max_faces, cancelled=cancelled)
    except BaseException:
        writer.abort()
        cap.release()
        raise
    return writer.close(frames_processed=done, smooth_ms=smooth_ms,
                        seconds_per_frame=every / info.fps)
