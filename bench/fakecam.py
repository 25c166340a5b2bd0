"""Fake camera videos for the browser tests and bench/page_stream.py: Chromium plays a
.y4m file as its camera.

Chromium's fake capture device (`--use-fake-device-for-media-stream
--use-file-for-fake-video-capture=FILE`) reads YUV4MPEG2 with 4:2:0 planes and loops it. The
header's colour space must say `C420`: Chromium rejects (and crashes on) `C420mpeg2`.
Each video moves a little from frame to frame, as a real camera's picture does, because the
page skips frames that have not changed since the last one it sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 640, 480  # a typical front camera's default stream
FPS = 15


def write_y4m(path: Path, frames: Iterable[np.ndarray], fps: int = FPS) -> Path:
    """Write RGB uint8 frames (all HEIGHT x WIDTH x 3, even sizes) as a C420 .y4m file."""
    frames = list(frames)
    if not frames:
        raise ValueError("a video needs at least one frame")
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 needs even sizes, got {w}x{h}")
    with Path(path).open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420\n".encode("ascii"))
        for rgb in frames:
            if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"frame of shape {rgb.shape} {rgb.dtype}, want {(h, w, 3)} uint8")
            out.write(b"FRAME\n")
            # OpenCV's I420 is planar Y, then U, then V: exactly a y4m frame's layout.
            out.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return Path(path)


def _jitter(count: int, radius: float) -> list[tuple[float, float]]:
    """Small circular camera shake, one (dx, dy) per frame, closing the loop smoothly."""
    angles = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    return [(radius * np.cos(a), radius * np.sin(a)) for a in angles]


def face_frames(rgb: np.ndarray, count: int = 16, seed: int = 0) -> list[np.ndarray]:
    """A still photo of a face as a 640x480 camera would frame it, shaking a few pixels."""
    side = WIDTH
    square = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    frames = []
    for dx, dy in _jitter(count, radius=4.0):
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        moved = cv2.warpAffine(square, shift, (side, side), borderMode=cv2.BORDER_REFLECT)
        frame = moved[:HEIGHT].astype(np.int16) + rng.normal(0, 2.0, (HEIGHT, WIDTH, 1)).astype(
            np.int16
        )
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def scene(photo: np.ndarray, side: int = 300, centre: tuple[int, int] = (WIDTH // 2,
          HEIGHT // 2),
          others: tuple[tuple[np.ndarray, int, tuple[int, int]], ...] = ()) -> np.ndarray:
    """A photo of a face `side` px square pasted into a 640x480 room-like scene (a lit wall
    with a shelf of boxes), as a front camera would see someone at arm's length; `others`
    (photo, side, centre) are more people in view."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    wall = 150 + 50 * (xx / WIDTH) - 40 * (yy / HEIGHT)
    frame = np.stack([wall * 0.95, wall * 0.9, wall * 0.8], axis=2)
    for i, x in enumerate(range(20, WIDTH - 60, 90)):  # boxes on a shelf, behind the person
        frame[40:110, x:x + 60] = (60 + 30 * (i % 3), 90, 120 - 20 * (i % 2))
    frame[110:118] = (70, 55, 40)
    for img, s, (cx, cy) in ((photo, side, centre), *others):
        x0, y0 = cx - s // 2, cy - s // 2
        frame[y0:y0 + s, x0:x0 + s] = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
    return np.clip(frame, 0, 255).astype(np.uint8)


def shaking(frame: np.ndarray, count: int = 16, seed: int = 0,
            radius: float = 4.0) -> list[np.ndarray]:
    """One 640x480 frame as a hand-held camera's video: a few pixels of shake (a circle of
    `radius` px over `count` frames), sensor noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for dx, dy in _jitter(count, radius=radius):
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        moved = cv2.warpAffine(frame, shift, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)
        noisy = moved.astype(np.int16) + rng.normal(0, 2.0, (HEIGHT, WIDTH, 1)).astype(np.int16)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


def gradient_frames(count: int = 16) -> list[np.ndarray]:
    """A smooth, mid-gray, slowly drifting gradient: bright enough to send, but no face."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    frames = []
    for i in range(count):
        phase = 2.0 * np.pi * i / count
        level = 128 + 60 * np.sin(xx / WIDTH * 2.0 * np.pi + phase) * np.cos(yy / HEIGHT * np.pi)
        frames.append(np.repeat(level.astype(np.uint8)[..., None], 3, axis=2))
    return frames


def dark_frames(count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """A camera in a dark room: near-black noise."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 16, (HEIGHT, WIDTH, 1), dtype=np.uint8).repeat(3, axis=2)
        for _ in range(count)
    ]
