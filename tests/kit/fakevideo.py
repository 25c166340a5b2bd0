"""Recorded videos of a face made from a photo, the test suite's way (tests/kit/fakecam.py's
room-like scene), drifting and scaling slowly as a hand-held phone does, encoded with
OpenCV's FFmpeg writer (MPEG-4 part 2, `mp4v`: the encoder every opencv-python wheel has)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tests.kit.fakecam import scene

FOURCC = "mp4v"


def drifting_frame(base: np.ndarray, i: int, fps: float) -> np.ndarray:
    """Frame `i` of `base` (RGB): drifting sideways a few percent and scaling by +-8 %."""
    h, w = base.shape[:2]
    t = i / fps
    m = cv2.getRotationMatrix2D((w / 2 + 0.02 * w * np.sin(t * 0.7), h / 2), 0.0,
                                1.0 + 0.08 * np.sin(t * 1.1))
    m[0, 2] += 0.025 * w * np.sin(t * 0.5)
    m[1, 2] += 0.015 * h * np.cos(t * 0.9)
    return cv2.warpAffine(base, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def write_face_video(path: Path, photo: np.ndarray, *, seconds: float, fps: float = 30.0,
                     size: tuple[int, int] = (1280, 720)) -> Path:
    """A `seconds` long video of `photo`'s face in a room, `size` (w, h) at `fps`."""
    w, h = size
    room = scene(photo)  # 640 x 480, face about 300 px
    scale = max(w / room.shape[1], h / room.shape[0])
    big = cv2.resize(room, (round(room.shape[1] * scale), round(room.shape[0] * scale)))
    y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    base = big[y0:y0 + h, x0:x0 + w]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {FOURCC} video here")
    try:
        for i in range(round(seconds * fps)):
            writer.write(cv2.cvtColor(drifting_frame(base, i, fps), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return Path(path)
