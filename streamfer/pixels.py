"""The pixel operations serving needs, without OpenCV: grayscale decoding, resizing, edge
padding, histogram equalisation and turning.

JPEG is decoded by libjpeg-turbo through simplejpeg (straight to grayscale, or reduced by
DCT scaling for large photos), PNG by Pillow, and the rest is Pillow and numpy. So a CPU
server installs neither OpenCV nor the FFmpeg it bundles; OpenCV stays for what needs it, the
video analyser and the Haar cascade fallback (the `[video]` extra, streamfer/optional.py).
The speed of each decoder is measured by bench/decode.py. Nothing here checks what an image
costs to decode: that is streamfer/imagecheck.py's job, done before any of this runs.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from io import BytesIO

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from streamfer.imagecheck import JPEG_MAGIC, BadImage

DCT_FACTORS = (1, 2, 4, 8)  # the reductions libjpeg applies while decoding a photo


def _turbo_gray(data: bytes, factor: int, warnings: list[str] | None) -> np.ndarray:
    """A JPEG's luma by libjpeg-turbo, at 1/factor; ValueError where its fast path refuses
    the file (a CMYK JPEG, an unusual chroma subsampling). A corrupt stream is decoded as far
    as it goes, as libjpeg does, and what libjpeg said of it goes to `warnings`."""
    size: dict[str, int] = {}
    if factor != 1:
        h, w = simplejpeg.decode_jpeg_header(data)[:2]
        size = {"min_width": -(-w // factor), "min_height": -(-h // factor)}
    try:
        gray = simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True, **size)
    except ValueError as exc:  # maybe only a warning: decode what can be decoded
        gray = simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=False, **size)
        if warnings is not None:
            warnings.append(f"libjpeg: {exc}")
    return np.ascontiguousarray(gray[:, :, 0])


def _pillow_gray(data: bytes, factor: int) -> np.ndarray:
    """Any image Pillow reads (PNG; a JPEG libjpeg-turbo's fast path refuses) as 8-bit
    grayscale, a JPEG at 1/factor (Pillow's draft mode: the same DCT scaling); 16-bit
    samples keep their high byte."""
    try:
        with Image.open(BytesIO(data)) as img:
            if factor > 1 and img.format in ("JPEG", "MPO"):
                w, h = img.size
                img.draft("L", (max(1, w // factor), max(1, h // factor)))
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(img, dtype=np.uint32)
                return (wide >> 8).clip(0, 255).astype(np.uint8)
            return np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError):
        raise BadImage("not a decodable JPEG/PNG image") from None


def decode_gray(data: bytes, factor: int = 1, warnings: list[str] | None = None
                ) -> np.ndarray:
    """JPEG/PNG bytes -> 8-bit grayscale array, or BadImage. A JPEG's luma is decoded as
    such (no colour conversion); `factor` (DCT_FACTORS) decodes a JPEG at 1/factor of its
    size, each side rounded up (a PNG is always decoded whole). What the decoder said of a
    damaged file it still decoded is appended to `warnings`."""
    if not data:
        raise BadImage("empty image")
    if factor not in DCT_FACTORS:
        raise ValueError(f"factor must be one of {DCT_FACTORS}, not {factor}")
    gray = None
    if data[:len(JPEG_MAGIC)] == JPEG_MAGIC:
        # Pillow's libjpeg, below, takes what libjpeg-turbo's fast path refuses.
        with contextlib.suppress(ValueError):
            gray = _turbo_gray(data, factor, warnings)
    if gray is None:
        gray = _pillow_gray(data, factor)
    if gray.size == 0:
        raise BadImage("not a decodable JPEG/PNG image")
    return gray


@lru_cache(maxsize=128)
def _area_taps(n: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Which input samples (K x n_out indices) make each output sample, and their weights:
    the share of the output's span each covers (OpenCV's INTER_AREA when shrinking)."""
    step = n / n_out
    ends = np.arange(n_out + 1) * step
    lo, hi = ends[:-1], ends[1:]
    taps = np.floor(lo).astype(np.int64)[None, :] + np.arange(int(np.ceil(step)) + 1)[:, None]
    weights = np.clip(np.minimum(taps + 1, hi) - np.maximum(taps, lo), 0, None) / step
    return np.minimum(taps, n - 1), weights.astype(np.float32)


def _area(img: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Area averaging along one axis: each output sample is the mean of the input over its
    span, partly covered pixels weighted by the part covered."""
    taps, weights = _area_taps(img.shape[axis], n_out)
    out = None
    for index, weight in zip(taps, weights, strict=True):
        part = (img[index] * weight[:, None]) if axis == 0 else (img[:, index] * weight)
        out = part if out is None else out + part
    return out


def resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """`gray` at width x height: area averaging where it shrinks (as a camera's downscale
    would; OpenCV's INTER_AREA), bilinear where it only grows."""
    h, w = gray.shape[:2]
    if (w, h) == (width, height):
        return gray
    if width > w and height > h:
        img = Image.fromarray(np.ascontiguousarray(gray))
        return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR))
    out = _area(gray, height, 0) if height != h else gray
    out = _area(out, width, 1) if width != w else out
    return np.rint(out).clip(0, 255).astype(np.uint8)


def scale(gray: np.ndarray, k: float) -> np.ndarray:
    """`gray` scaled by `k` (each side rounded, at least one pixel)."""
    h, w = gray.shape[:2]
    return resize(gray, max(1, round(w * k)), max(1, round(h * k)))


def pad_edges(gray: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """`gray` with its edge pixels repeated outward by the given widths."""
    return np.pad(gray, ((top, bottom), (left, right)), mode="edge")


def equalize_hist(gray: np.ndarray) -> np.ndarray:
    """Histogram equalisation of one 8-bit image, OpenCV's equalizeHist to the bit: the
    darkest level present maps to 0, the rest by the cumulative histogram scaled to 255 in
    single precision, rounded half to even."""
    hist = np.bincount(gray.ravel(), minlength=256)
    low = int(np.flatnonzero(hist)[0]) if gray.size else 0
    total = gray.size
    if not total or hist[low] == total:
        return np.full_like(gray, low)
    step = np.float32(255.0) / np.float32(total - hist[low])
    sums = np.cumsum(hist) - hist[low]
    lut = np.rint(sums.astype(np.float32) * step).clip(0, 255).astype(np.uint8)
    lut[:low + 1] = 0
    return lut[gray]


def orient(gray: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) so the image is the right way up."""
    if orientation in (2, 4, 5, 7):  # mirrored variants: flip first, then turn as 1/3/6/8
        gray = gray[:, ::-1]
        orientation = {2: 1, 4: 3, 5: 8, 7: 6}[orientation]
    turns = {3: 2, 6: -1, 8: 1}  # quarter turns anticlockwise (np.rot90's k)
    if orientation in turns:
        gray = np.rot90(gray, turns[orientation])
    return np.ascontiguousarray(gray)
