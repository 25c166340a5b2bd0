"""Fake cameras for the browser tests and bench/page_stream.py: Chromium plays a .y4m file
as its camera; in any engine, FAKECAM_JS shows a photo through a canvas stream.

Chromium's fake capture device (`--use-fake-device-for-media-stream
--use-file-for-fake-video-capture=FILE`) reads YUV4MPEG2 with 4:2:0 planes and loops it. The
header's colour space must say `C420`: Chromium rejects (and crashes on) `C420mpeg2`.
Each video moves a little from frame to frame, as a real camera's picture does, because the
page skips frames that have not changed since the last one it sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 640, 480  # a typical front camera's default stream
FPS = 15


def jpeg(rgb: np.ndarray) -> bytes:
    """`rgb` as a JPEG at OpenCV's default quality, as a camera's frame or photo is sent."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


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


# A camera for engines whose fake capture device cannot play a file (Firefox, WebKit): run
# before the page's own scripts, it replaces getUserMedia with a canvas.captureStream() of
# `window.__fakecam.image` (a data: URL) drifting a few pixels per frame, as a hand-held
# camera's picture does. `window.__fakecam.mode` picks what the camera shows, and may change
# while the page runs: "face" (the image), "blank" (a drifting gray gradient: no face), or
# "deny" (getUserMedia fails as when the person refuses the camera). Page errors are collected
# in `window.__pageErrors`. Running it again in the same window keeps the same camera.
FAKECAM_JS = """
(() => {
  window.__pageErrors = window.__pageErrors || [];
  // (Added on every run: document.open() removes a window's listeners.)
  addEventListener("error", (e) => window.__pageErrors.push(String(e.message || e)));
  addEventListener("unhandledrejection", (e) => window.__pageErrors.push(String(e.reason)));
  if (window.__fakecamInstalled) return;
  window.__fakecamInstalled = true;
  const cam = () => window.__fakecam || {}; // read on every frame: a test may change the mode
  let image = null;
  const picture = () => {
    if (!image) {
      image = new Image();
      image.src = cam().image;
    }
    return image.decode().then(() => image);
  };
  async function getUserMedia() {
    if (cam().mode === "deny") throw new DOMException("Permission denied", "NotAllowedError");
    const img = await picture();
    const canvas = document.createElement("canvas");
    canvas.width = 640;
    canvas.height = 480;
    const ctx = canvas.getContext("2d");
    let t = 0;
    const draw = () => {
      t += 1;
      const dx = 4 * Math.cos(t / 2.5);
      const dy = 4 * Math.sin(t / 2.5);
      if (cam().mode === "face") {
        ctx.drawImage(img, dx - 4, dy - 4, 648, 488);
      } else {
        const g = ctx.createLinearGradient(dx * 20, 0, 640 - dx * 20, 480);
        g.addColorStop(0, "#5a5a5a");
        g.addColorStop(1, "#b4b4b4");
        ctx.fillStyle = g;
        ctx.fillRect(0, 0, 640, 480);
      }
    };
    draw();
    setInterval(draw, 1000 / 15);
    return canvas.captureStream(15);
  }
  if (!navigator.mediaDevices) {
    Object.defineProperty(navigator, "mediaDevices", { value: {}, configurable: true });
  }
  navigator.mediaDevices.getUserMedia = getUserMedia;
})();
"""


def fakecam_script(image_jpeg: bytes, mode: str = "face") -> str:
    """FAKECAM_JS set up to show `image_jpeg` (640x480 JPEG bytes) in `mode`."""
    url = "data:image/jpeg;base64," + base64.b64encode(image_jpeg).decode("ascii")
    return f"window.__fakecam = {json.dumps({'mode': mode, 'image': url})};\n{FAKECAM_JS}"
