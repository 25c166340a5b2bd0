"""Faces as the model takes them, shared by the server, the page (the greeting), training
and evaluation: grayscale decoding (streamfer/pixels.py), how a detector's box is framed
like the training faces (FRAMING, per detector name), the crop geometry (crop_face, crop_at,
square_at), the resize, and a model's preprocessing. Finding the faces is
streamfer/detect.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamfer.imagecheck import BadImage  # re-exported: faces.BadImage
from streamfer.pixels import decode_gray, equalize_hist, pad_edges, resize

# How the training faces are framed relative to the box a face detector draws around the
# same face, per detector, defined here once for the server and the page (which gets this
# table in the greeting): a square of `scale` x the box side, centred `shift_y` x its side
# below the box centre, frames a camera face as the model saw faces in training. Measured
# with `python -m training.framing --detector NAME` on 3,000 FER2013 Training faces
# (upsampled and padded), never on evaluation data:
# - haar: the cascade found 73%; image side a median 1.03x the box side (quartiles
#   0.97-1.11), centred to within 0.3% of the side.
# - blazeface (MediaPipe's BlazeFace short range, the weights in @mediapipe/face_detection;
#   streamfer.detect on the server, the same package in the page): found 90.7%; image side a
#   median 1.20x the box side (quartiles 1.10-1.35); the box is tight (brows to chin) and sits
#   low, so the crop centre is 0.073 of its side above the box centre (quartiles 0.03-0.11).
#   The page's own BlazeFace, calibrated the same way in headless Chromium on 2,000 faces
#   (`python bench/page_detectors.py --calibrate`), gives 1.205 and -0.072: the same network.
# - shape (the Shape Detection API's FaceDetector): no browser here has it to calibrate, so
#   Haar's is used.
# The detectors' names, defined here once (the framing table is keyed by them): the server's
# two (streamfer/detect.py) and the browser's Shape Detection API (the page only).
HAAR, BLAZEFACE, SHAPE = "haar", "blazeface", "shape"
FRAMING: dict[str, dict[str, float]] = {
    HAAR: {"scale": 1.03, "shift_y": 0.0},
    BLAZEFACE: {"scale": 1.2, "shift_y": -0.073},
    SHAPE: {"scale": 1.03, "shift_y": 0.0},
}


@dataclass(frozen=True)
class Box:
    """A face box in frame pixels."""

    x: int
    y: int
    w: int
    h: int

    def to_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


@dataclass(frozen=True)
class Face:
    """A model-ready face: `pixels` is size x size uint8; `box` is where it was in the frame."""

    pixels: np.ndarray
    box: Box


def load_gray(path: str | Path) -> np.ndarray:
    """Read an image file as grayscale through the same decoder the server uses."""
    try:
        return decode_gray(Path(path).read_bytes())
    except BadImage as exc:
        raise BadImage(f"{path}: {exc}") from None


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size (area averaging when shrinking, as a camera's downscale would)."""
    if gray.shape[:2] == (size, size):
        return gray
    return resize(gray, size, size)


# What a model does to each model-ready face before its own normalisation, named in its
# metadata ("preprocess"; absent means "none"): the server applies it (streamfer/model.py) and
# training applies the same function, so the file says what its training faces looked like.
# "equalize-hist": per-face histogram equalisation, as the fer2013/ distribution's images are.
PREPROCESS_MODES = ("none", "equalize-hist")


def equalize_faces(faces: np.ndarray) -> np.ndarray:
    """N x S x S uint8 faces, each histogram-equalised on its own (OpenCV's equalizeHist)."""
    return np.stack([equalize_hist(f) for f in faces]) if len(faces) else faces.copy()


def preprocess_faces(faces: np.ndarray, mode: str) -> np.ndarray:
    """Apply a model's "preprocess" step (PREPROCESS_MODES) to N x S x S uint8 faces."""
    if mode == "none":
        return faces
    if mode == "equalize-hist":
        return equalize_faces(faces)
    raise ValueError(f"unknown preprocess {mode!r}; known: {PREPROCESS_MODES}")


def crop_face(gray: np.ndarray, box: Box, size: int, detector: str = HAAR) -> np.ndarray:
    """Cut the training framing around a box drawn by `detector` (a FRAMING key)."""
    framing = FRAMING[detector]
    return crop_at(gray, box, size, framing["scale"], framing["shift_y"])


def crop_at(gray: np.ndarray, box: Box, size: int, scale: float, shift_y: float) -> np.ndarray:
    """The crop geometry, once: a square `scale` box sides wide, its centre `shift_y` of its
    side below the box centre, padded with edge pixels if needed, resized to `size`
    (training.framing calls it with trial constants)."""
    side = max(box.w, box.h) * scale
    cx = box.x + box.w / 2.0
    cy = box.y + box.h / 2.0 + shift_y * side
    x0, y0 = round(cx - side / 2.0), round(cy - side / 2.0)
    return square_at(gray, x0, y0, max(1, round(side)), size)


PAD_EXACT_PIXELS = 2048 * 2048  # squares up to this are padded at full size, then resized


def square_at(gray: np.ndarray, x0: int, y0: int, side: int, out: int | None = None
              ) -> np.ndarray:
    """The square (x0, y0, side) of `gray`, resized to out x out (None: side x side), with
    edge pixels where it runs past the image. Memory is bounded by the square, never by the
    image: only the part inside the image is cut, and a square over PAD_EXACT_PIXELS that
    needs padding is resized before it is padded (a tile past the edge of a long thin photo
    would otherwise be padded to gigabytes)."""
    h, w = gray.shape[:2]
    xa, ya = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    xb, yb = max(min(x0 + side, w), xa + 1), max(min(y0 + side, h), ya + 1)
    inner = gray[ya:yb, xa:xb]
    if (xa, ya, xb, yb) == (x0, y0, x0 + side, y0 + side):  # inside the image
        return inner if out is None else resize_square(inner, out)
    if out is None or side * side <= PAD_EXACT_PIXELS:
        padded = pad_edges(inner, ya - y0, y0 + side - yb, xa - x0, x0 + side - xb)
        return padded if out is None else resize_square(padded, out)
    f = out / side
    left, top = min(out - 1, round((xa - x0) * f)), min(out - 1, round((ya - y0) * f))
    iw = min(out - left, max(1, round((xb - x0) * f) - left))
    ih = min(out - top, max(1, round((yb - y0) * f) - top))
    small = resize(inner, iw, ih)
    return pad_edges(small, top, out - top - ih, left, out - left - iw)
