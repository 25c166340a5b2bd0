"""Face preprocessing shared by the server and by training's evaluation.

One path from encoded image bytes to the grayscale, square, fixed-size face crop the model
was trained on: decode -> (detect -> frame like the training faces) -> crop -> resize.
OpenCV decodes (bench/decode.py compares it with Pillow). Full frames are searched by
BlazeFace (streamfer/detect.py); OpenCV's bundled Haar cascade is the fallback where
BlazeFace's weights are not installed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamfer.imagecheck import BadImage  # re-exported: faces.BadImage

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
FRAMING: dict[str, dict[str, float]] = {
    "haar": {"scale": 1.03, "shift_y": 0.0},
    "blazeface": {"scale": 1.2, "shift_y": -0.073},
    "shape": {"scale": 1.03, "shift_y": 0.0},
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


def decode_gray(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes straight to an 8-bit grayscale array, or raise BadImage."""
    if not data:
        raise BadImage("empty image")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.size == 0:
        raise BadImage("not a decodable JPEG/PNG image")
    return img


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
    shrink = gray.shape[0] > size or gray.shape[1] > size
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrink else
                      cv2.INTER_LINEAR)


# What a model does to each model-ready face before its own normalisation, named in its
# metadata ("preprocess"; absent means "none"): the server applies it (streamfer/model.py) and
# training applies the same function, so the file says what its training faces looked like.
# "equalize-hist": per-face histogram equalisation, as the fer2013/ distribution's images are.
PREPROCESS_MODES = ("none", "equalize-hist")


def equalize_faces(faces: np.ndarray) -> np.ndarray:
    """N x S x S uint8 faces, each histogram-equalised on its own (OpenCV's equalizeHist)."""
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(f)) for f in faces]) \
        if len(faces) else faces.copy()


def preprocess_faces(faces: np.ndarray, mode: str) -> np.ndarray:
    """Apply a model's "preprocess" step (PREPROCESS_MODES) to N x S x S uint8 faces."""
    if mode == "none":
        return faces
    if mode == "equalize-hist":
        return equalize_faces(faces)
    raise ValueError(f"unknown preprocess {mode!r}; known: {PREPROCESS_MODES}")


NO_HAAR = ("this OpenCV build has no Haar cascades (OpenCV 5 dropped them), so the server "
           "cannot find faces in full frames: send face crops, or install "
           "'opencv-python-headless<5' on the server")


class DetectorUnavailable(RuntimeError):
    """Full frames need a face detector and this OpenCV build has none; crops still work."""


class FaceDetector:
    """OpenCV's frontal-face Haar cascade, one instance per thread (it is not thread-safe)."""

    def __init__(self, min_face_fraction: float = 0.15) -> None:
        # OpenCV 5 wheels ship neither CascadeClassifier nor the cascade files.
        self.available = hasattr(cv2, "CascadeClassifier") and hasattr(cv2, "data")
        self.cascade_path = (str(Path(cv2.data.haarcascades) /
                                 "haarcascade_frontalface_default.xml")
                             if self.available else "")
        self.min_face_fraction = min_face_fraction
        self._local = threading.local()

    def _cascade(self) -> cv2.CascadeClassifier:
        if not self.available:
            raise DetectorUnavailable(NO_HAAR)
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = cv2.CascadeClassifier(self.cascade_path)
            if cascade.empty():
                raise RuntimeError(f"could not load the Haar cascade at {self.cascade_path}")
            self._local.cascade = cascade
        return cascade

    def detect(self, gray: np.ndarray) -> Box | None:
        """The most confident frontal face, or None. Works on a copy scaled to <= 320 px wide."""
        scale = min(1.0, 320.0 / max(gray.shape[1], 1))
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else gray
        side = min(small.shape[:2])
        min_side = max(24, int(side * self.min_face_fraction))
        found, _, weights = self._cascade().detectMultiScale3(
            cv2.equalizeHist(small), scaleFactor=1.1, minNeighbors=5,
            minSize=(min_side, min_side), outputRejectLevels=True,
        )
        if len(found) == 0:
            return None
        # The most confident box, not the largest: on busy backgrounds the cascade's false
        # positives can be bigger than the real face (skimage's astronaut shows one).
        x, y, w, h = found[int(np.argmax(np.ravel(weights)))]
        return Box(int(x / scale), int(y / scale), int(w / scale), int(h / scale))


def crop_face(gray: np.ndarray, box: Box, size: int, detector: str = "haar") -> np.ndarray:
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
        padded = cv2.copyMakeBorder(inner, ya - y0, y0 + side - yb, xa - x0, x0 + side - xb,
                                    cv2.BORDER_REPLICATE)
        return padded if out is None else resize_square(padded, out)
    f = out / side
    left, top = min(out - 1, round((xa - x0) * f)), min(out - 1, round((ya - y0) * f))
    iw = min(out - left, max(1, round((xb - x0) * f) - left))
    ih = min(out - top, max(1, round((yb - y0) * f) - top))
    small = cv2.resize(inner, (iw, ih), interpolation=cv2.INTER_AREA
                       if iw < inner.shape[1] or ih < inner.shape[0] else cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(small, top, out - top - ih, left, out - left - iw,
                              cv2.BORDER_REPLICATE)


def prepare(data: bytes, *, is_crop: bool, size: int, detector: FaceDetector) -> Face | None:
    """Bytes -> model-ready face, or None when a full frame holds no face.

    Client-made crops (the page's own face detector already framed them) skip detection and
    are only converted and resized; full camera frames go through the detector.
    """
    gray = decode_gray(data)
    if is_crop:
        h, w = gray.shape[:2]
        return Face(resize_square(gray, size), Box(0, 0, w, h))
    box = detector.detect(gray)
    if box is None:
        return None
    return Face(crop_face(gray, box, size), box)
