"""Find faces: BlazeFace, the network the phone page runs, on the server.

Why this detector (docs/BENCHMARKS.md, bench/detect_bench.py): on webfaces-dev photos it
finds more faces than OpenCV's Haar cascade at a fraction of its CPU time, it runs batched on
a GPU, and it needs no OpenCV extras (OpenCV 5 wheels have no cascades). Its weights are the
.tflite files of the npm package `@mediapipe/face_detection` (web/package.json, `npm ci`),
never downloaded at run time, never copied into the repository. On the CPU they run on
Google's LiteRT interpreter (streamfer.detect_litert, no PyTorch); on a GPU, read into
PyTorch and batched on the device (streamfer.detect_torch). Page and server thus share one
network and one framing calibration (faces.FRAMING["blazeface"]). OpenCV's Haar cascade
(FaceDetector, HaarFallback behind BlazeFace's calls) is the fallback without its weights,
where OpenCV is installed (the `[video]` extra).

The geometry follows MediaPipe's face detection graph (face_detection_short_range.pbtxt):
letterbox the image into the square input, SSD anchors (896 for short range: 16x16x2 +
8x8x6), box offsets scaled by the input side, score = sigmoid(logit clipped to +-100),
weighted non-maximum suppression at IoU 0.3. The score threshold: MediaPipe's default
(0.6) for the full-range model; for the short-range one, MediaPipe's 0.5 alone reported faces in
many face-free images (a coffee cup), so the server's search keeps a face only at
FACE_MIN_SCORE and when the mirror image confirms it (BlazeFace.confirm), both measured and
chosen by bench/false_faces.py on face-free images.

Three steps, so a GPU server can batch the middle one across connections:
`prepare` (CPU: letterbox one gray image) -> `infer` (device: N inputs at once) ->
`decode` (CPU: boxes for one image). `detect` chains them for one image. This module holds
the geometry; the network runs in one of the two runtimes (RUNTIMES).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamfer.faces import (
    BLAZEFACE,
    HAAR,
    Box,
    Face,
    crop_face,
    decode_gray,
    resize_square,
    square_at,
)
from streamfer.optional import OPENCV_EXTRA, has_opencv, import_cv2, import_torch
from streamfer.paths import PACKAGE_ROOT
from streamfer.pixels import equalize_hist, pad_edges, resize, scale

log = logging.getLogger(__name__)

WEIGHTS_DIR = PACKAGE_ROOT / "web" / "node_modules" / "@mediapipe" / "face_detection"
NPM_HINT = "run `npm ci` in web/ to install @mediapipe/face_detection"
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold
RUNTIMES = ("litert", "torch")  # LiteRT on the CPU, the PyTorch port on any device
TIGHT_PAD = 0.3  # a frame with no face is searched again with this margin added on each side
TILE_MIN_SCORE = 0.6  # MediaPipe's full-range default: see BlazeFace.detect_photo
# The short-range model's threshold as served, with the mirror check (BlazeFace.confirm) at
# MediaPipe's own 0.5: the lowest that keeps face-free images reported as a face at 1% or
# less (bench/false_faces.py, its rule and curve: docs/BENCHMARKS.md).
FACE_MIN_SCORE = 0.59
TRACK_SCALE = 2.2  # the tracking region's side, in last-box sides
HAAR_SEARCH_SIDE = 640  # a padded search by the cascade is shrunk to this first (it searches
# at <= 320 px wide anyway)
DETECTORS = (BLAZEFACE, HAAR)  # the server's detectors, by name (faces.FRAMING's keys)


NO_HAAR = ("without BlazeFace's weights the server needs OpenCV's Haar cascade to find faces "
           f"in full frames, and it has none: run `npm ci` in web/ (BlazeFace), or install "
           f"'{OPENCV_EXTRA}' (opencv-python-headless<5); face crops still work")


class DetectorUnavailable(RuntimeError):
    """Full frames need a face detector and none is installed; crops still work."""


class FaceDetector:
    """OpenCV's frontal-face Haar cascade, one instance per thread (it is not thread-safe)."""

    def __init__(self, min_face_fraction: float = 0.15) -> None:
        # Not without OpenCV, nor with OpenCV 5, whose wheels ship no cascades.
        self.cv2 = import_cv2("the Haar cascade") if has_opencv() else None
        self.available = self.cv2 is not None and hasattr(self.cv2, "CascadeClassifier") \
            and hasattr(self.cv2, "data")
        self.cascade_path = (str(Path(self.cv2.data.haarcascades) /
                                 "haarcascade_frontalface_default.xml")
                             if self.available else "")
        self.min_face_fraction = min_face_fraction
        self._local = threading.local()

    def _cascade(self) -> Any:
        if not self.available:
            raise DetectorUnavailable(NO_HAAR)
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = self.cv2.CascadeClassifier(self.cascade_path)
            if cascade.empty():
                raise RuntimeError(f"could not load the Haar cascade at {self.cascade_path}")
            self._local.cascade = cascade
        return cascade

    def detect(self, gray: np.ndarray) -> Box | None:
        """The most confident frontal face, or None. Works on a copy scaled to <= 320 px wide."""
        k = min(1.0, 320.0 / max(gray.shape[1], 1))
        small = scale(gray, k) if k < 1.0 else gray
        side = min(small.shape[:2])
        min_side = max(24, int(side * self.min_face_fraction))
        found, _, weights = self._cascade().detectMultiScale3(
            equalize_hist(small), scaleFactor=1.1, minNeighbors=5,
            minSize=(min_side, min_side), outputRejectLevels=True,
        )
        if len(found) == 0:
            return None
        # The most confident box, not the largest: on busy backgrounds the cascade's false
        # positives can be bigger than the real face (skimage's astronaut shows one).
        x, y, w, h = found[int(np.argmax(np.ravel(weights)))]
        return Box(int(x / k), int(y / k), int(w / k), int(h / k))


@dataclass(frozen=True)
class BlazeSpec:
    """One BlazeFace variant, as MediaPipe's graph configures it."""

    name: str
    file: str
    size: int
    strides: tuple[int, ...]
    anchors_per_cell: int  # per SSD layer: aspect ratio 1 + interpolated scale (short range)
    min_score: float


SPECS = {
    "short": BlazeSpec("short", "face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2,
                       0.5),
    "full": BlazeSpec("full", "face_detection_full_range.tflite", 192, (4,), 1, 0.6),
}


def ssd_anchors(spec: BlazeSpec) -> np.ndarray:
    """Anchor centres (A x 2, x then y, in [0, 1]); anchors have fixed unit size. Layers of
    equal stride share one grid, as in MediaPipe's SsdAnchorsCalculator."""
    centres: list[tuple[float, float]] = []
    i = 0
    while i < len(spec.strides):
        stride, n = spec.strides[i], 0
        while i < len(spec.strides) and spec.strides[i] == stride:
            n += spec.anchors_per_cell
            i += 1
        cells = -(-spec.size // stride)
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * n
    return np.asarray(centres, np.float32)


@dataclass(frozen=True)
class Detection:
    """A face: its box in image pixels and the detector's confidence (0..1)."""

    box: Box
    score: float


@dataclass(frozen=True)
class Letterbox:
    """Where a prepared input came from: input pixel = (image pixel - origin) * scale + offset."""

    scale: float
    ox: float  # offset of the image inside the input (letterbox margin), input pixels
    oy: float
    x0: float  # origin of the searched region in the image (a tracking region or a pad)
    y0: float

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.ox) / self.scale + self.x0, (y - self.oy) / self.scale + self.y0


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x0, y0, x1, y1) box with many."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray,
                 iou: float = NMS_IOU) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's WEIGHTED suppression: each cluster of overlapping boxes becomes their
    score-weighted mean, with the best score of the cluster. Best first."""
    order = np.argsort(-scores)
    boxes, scores = boxes[order], scores[order]
    out = []
    while len(scores):
        near = _iou(boxes[0], boxes) > iou
        w = scores[near]
        out.append(((boxes[near] * w[:, None]).sum(0) / w.sum(), float(scores[0])))
        boxes, scores = boxes[~near], scores[~near]
    return out


class BlazeFace:
    """BlazeFace on `device`; thread-safe. `runtime`: "litert" (the CPU's, the default there)
    or "torch" (the PyTorch port, the default elsewhere; needs the `[gpu]` extra)."""

    name = BLAZEFACE

    def __init__(self, variant: str = "short", *, device: Any = "cpu",
                 weights_dir: str | Path = WEIGHTS_DIR, min_score: float | None = None,
                 runtime: str | None = None) -> None:
        self.spec = SPECS[variant]
        self.path = Path(weights_dir) / self.spec.file
        if not self.path.is_file():
            raise FileNotFoundError(f"BlazeFace weights not found at {self.path} ({NPM_HINT})")
        self.device = str(device)
        self.runtime = runtime or ("litert" if self.device == "cpu" else "torch")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {self.runtime!r}")
        if self.runtime == "litert" and self.device != "cpu":
            raise ValueError("BlazeFace on LiteRT runs on the CPU only")
        self.size = self.spec.size
        if min_score is None:
            min_score = FACE_MIN_SCORE if variant == "short" else self.spec.min_score
        self.min_score = min_score
        self.anchors = ssd_anchors(self.spec)
        self.net: Any
        if self.runtime == "litert":
            from streamfer.detect_litert import LiteRTNet

            self.net = LiteRTNet(self.path)
        else:
            import_torch(f"BlazeFace on {self.device} (its PyTorch port)")
            from streamfer.detect_torch import TorchNet

            self.net = TorchNet(self.path, self.device)
        self.warm_up()

    def warm_up(self, batch: int = 1) -> None:
        for _ in range(3):
            self.infer(np.full((batch, self.size, self.size), 128, np.uint8))

    @property
    def description(self) -> str:
        where = "LiteRT, cpu" if self.runtime == "litert" else f"PyTorch, {self.device}"
        return f"BlazeFace {self.spec.name}-range ({self.path.name}, {where})"

    def prepare(self, gray: np.ndarray, region: tuple[int, int, int] | None = None,
                pad: float = 0.0) -> tuple[np.ndarray, Letterbox]:
        """Letterbox `gray` (or the square `region` = (x0, y0, side) of it, or the whole image
        with a margin of `pad` x its longer side added on each side) into the S x S input."""
        s = self.size
        x0 = y0 = 0.0
        if region is not None and not pad:  # cut and scaled at once: memory of the input's
            rx, ry, side = region
            return square_at(gray, rx, ry, side, s), Letterbox(s / side, 0.0, 0.0, float(rx),
                                                             float(ry))
        if region is not None:
            rx, ry, side = region
            gray, x0, y0 = square_at(gray, rx, ry, side), float(rx), float(ry)
        h, w = gray.shape[:2]
        margin = pad * max(h, w)
        scale = s / (max(h, w) + 2 * margin)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = resize(gray, nw, nh)
        canvas = np.full((s, s), 128, np.uint8)
        ox, oy = (s - nw) // 2, (s - nh) // 2
        canvas[oy:oy + nh, ox:ox + nw] = small
        return canvas, Letterbox(scale, ox, oy, x0, y0)

    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N x S x S uint8 -> (N x A x 16 regressors, N x A scores), on this detector's device."""
        return self.net.infer(inputs)

    def decode(self, regress: np.ndarray, scores: np.ndarray, where: Letterbox,
               bounds: tuple[int, int] | None = None) -> list[Detection]:
        """One image's boxes (best first) in image pixels, clipped to `bounds` (h, w)."""
        keep = np.flatnonzero(scores >= self.min_score)
        if keep.size == 0:
            return []
        s = float(self.size)
        r, a = regress[keep], self.anchors[keep]
        cx, cy = r[:, 0] + a[:, 0] * s, r[:, 1] + a[:, 1] * s
        boxes = np.stack([cx - r[:, 2] / 2, cy - r[:, 3] / 2, cx + r[:, 2] / 2,
                          cy + r[:, 3] / 2], axis=1)
        found = []
        for b, score in weighted_nms(boxes, scores[keep]):
            xa, ya = where.to_image(b[0], b[1])
            xb, yb = where.to_image(b[2], b[3])
            if bounds is not None:
                xa, ya = max(0.0, xa), max(0.0, ya)
                xb, yb = min(float(bounds[1]), xb), min(float(bounds[0]), yb)
            if xb - xa >= 2 and yb - ya >= 2:
                found.append(Detection(Box(round(xa), round(ya), round(xb - xa),
                                           round(yb - ya)), score))
        return found

    def detect(self, gray: np.ndarray, region: tuple[int, int, int] | None = None,
               pad: float = 0.0) -> list[Detection]:
        """Every face in one image (or region of it), best first."""
        x, where = self.prepare(gray, region, pad)
        regress, scores = self.infer(x[None])
        return self.decode(regress[0], scores[0], where, gray.shape[:2])

    def confirm(self, gray: np.ndarray, found: list[Detection]) -> list[Detection]:
        """The detections that the mirrored image confirms: a face is found again, at
        MediaPipe's threshold for this model, in the mirror image of the region around it
        (track_region's square, one batch for all). A face reads as a face mirrored; most
        of the patterns that fool the network on face-free images (a coffee cup's rim) do
        not.
        bench/false_faces.py measures what this check and the threshold cost and save."""
        if not found:
            return found
        inputs = [self.prepare(mirrored_region(gray, d.box))[0] for d in found]
        _, scores = self.infer(np.stack(inputs))
        return [d for d, sc in zip(found, scores, strict=True)
                if sc.max() >= self.spec.min_score]

    def detect_photo(self, gray: np.ndarray, whole: bool = True) -> list[Detection]:
        """Every face in a photo, small ones included, best first (`whole=False`: the tiles
        alone, for a frame whose whole-image search found nothing).

        The short-range model sees the image at 128 px, so it misses faces under ~15% of
        the longer side (a group photo's). A photo is therefore also searched in square
        tiles of half its longer side, overlapping by half a tile, all in one batch; a
        tile's face cut by an inner tile edge is left to the neighbouring tile, and
        overlapping faces from different searches keep the most confident (IoU > 0.3).
        Tiles look for small faces, the job of MediaPipe's full-range model, so they use
        that model's default threshold (0.6) rather than the short-range 0.5.
        """
        h, w = gray.shape[:2]
        regions: list[tuple[int, int, int] | None] = [None] if whole else []
        tile = max(h, w) // 2
        if tile >= 2 * self.size:
            step = tile // 2
            xs = sorted({*range(0, max(w - tile, 0), step), max(w - tile, 0)})
            ys = sorted({*range(0, max(h - tile, 0), step), max(h - tile, 0)})
            regions += [(x, y, tile) for y in ys for x in xs]
        if not regions:
            return []
        prepared = [self.prepare(gray, r) for r in regions]
        regress, scores = self.infer(np.stack([x for x, _ in prepared]))
        found: list[Detection] = []
        for i, (region, (_, where)) in enumerate(zip(regions, prepared, strict=True)):
            for d in self.decode(regress[i], scores[i], where, (h, w)):
                if region is None or (d.score >= TILE_MIN_SCORE and
                                      not _cut_by_inner_edge(d.box, region, h, w)):
                    found.append(d)
        found.sort(key=lambda d: -d.score)
        kept: list[Detection] = []
        for d in found:
            b = np.array([d.box.x, d.box.y, d.box.x + d.box.w, d.box.y + d.box.h], float)
            others = np.array([[k.box.x, k.box.y, k.box.x + k.box.w, k.box.y + k.box.h]
                               for k in kept], float).reshape(-1, 4)
            if not len(kept) or _iou(b, others).max() <= NMS_IOU:
                kept.append(d)
        return kept


class HaarFallback:
    """OpenCV's Haar cascade (FaceDetector) behind the same `detect` call: used only
    when BlazeFace's weights are absent. One face at most, score 1."""

    name = HAAR

    def __init__(self) -> None:
        self.cascade = FaceDetector()

    @property
    def available(self) -> bool:
        return self.cascade.available

    @property
    def description(self) -> str:
        return ("OpenCV Haar cascade (fallback)" if self.available
                else "none (no BlazeFace weights, no Haar cascade)")

    def detect(self, gray: np.ndarray, region: tuple[int, int, int] | None = None,
               pad: float = 0.0) -> list[Detection]:
        x0 = y0 = 0
        if region is not None:
            x0, y0, side = region
            gray = square_at(gray, x0, y0, side)
        k = 1.0
        if pad:  # shrunk first to what the cascade would search: memory of the search's
            k = min(1.0, HAAR_SEARCH_SIDE / ((1 + 2 * pad) * max(gray.shape[:2])))
            if k < 1.0:
                gray = scale(gray, k)
            p = round(pad * max(gray.shape[:2]))
            gray = pad_edges(gray, p, p, p, p)
            x0, y0 = round(x0 - p / k), round(y0 - p / k)
        box = self.cascade.detect(gray)
        if box is None:
            return []
        return [Detection(Box(round(box.x / k) + x0, round(box.y / k) + y0, round(box.w / k),
                              round(box.h / k)), 1.0)]

    def detect_photo(self, gray: np.ndarray, whole: bool = True) -> list[Detection]:
        return self.detect(gray) if whole else []

    def confirm(self, gray: np.ndarray, found: list[Detection]) -> list[Detection]:
        return found


def _cut_by_inner_edge(box: Box, region: tuple[int, int, int], h: int, w: int,
                       margin: int = 2) -> bool:
    """Does `box` touch an edge of the tile `region` that lies inside the image?"""
    x0, y0, side = region
    return ((x0 > 0 and box.x <= x0 + margin) or (y0 > 0 and box.y <= y0 + margin) or
            (x0 + side < w and box.x + box.w >= x0 + side - margin) or
            (y0 + side < h and box.y + box.h >= y0 + side - margin))


def mirrored_region(gray: np.ndarray, box: Box) -> np.ndarray:
    """The mirror image of the square around `box` (track_region's): what confirm searches."""
    x0, y0, side = track_region(box)
    return np.ascontiguousarray(square_at(gray, x0, y0, side)[:, ::-1])


def track_region(box: Box, scale: float = TRACK_SCALE) -> tuple[int, int, int]:
    """The square searched first in the next frame: `scale` x the last box, same centre."""
    side = max(8, round(max(box.w, box.h) * scale))
    return (round(box.x + box.w / 2 - side / 2), round(box.y + box.h / 2 - side / 2), side)


def load_detector(device: Any = "cpu", variant: str = "short",
                  weights_dir: str | Path = WEIGHTS_DIR) -> BlazeFace | HaarFallback:
    """BlazeFace when its weights are installed, else the Haar cascade (with a warning)."""
    try:
        return BlazeFace(variant, device=device, weights_dir=weights_dir)
    except FileNotFoundError as exc:
        log.warning("%s; falling back to the Haar cascade", exc)
        return HaarFallback()


def largest_first(found: Sequence[Detection]) -> list[Detection]:
    return sorted(found, key=lambda d: d.box.w * d.box.h, reverse=True)


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
