"""The images the load test streams: encoded once up front, so the client spends its time
sending and timing, not encoding (a phone encodes on its own CPU, not the server's).

Two kinds, as the page sends them: full camera frames (the server detects the face) or
client-made face crops (flag bit 0 set; the server skips detection). Crops are made the way
the page makes them: detect (BlazeFace, the page's network), cut the face with the
detector's framing, encode a small grayscale JPEG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from streamfer.detect import BlazeFace, HaarFallback, largest_first, load_detector
from streamfer.faces import BadImage, Box, crop_face, decode_gray
from streamfer.pixels import pad_edges, resize
from streamfer.protocol import pack_frame

log = logging.getLogger(__name__)

KINDS = ("crops", "frames")
FRAME_WIDTH = 320  # what the page sends: a 320 px wide camera frame
CROP_SIDES = (48, 64, 80, 96)  # the page's crops are 48..96 px
JPEG_QUALITY = 80
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class FrameSet:
    """Encoded images to cycle through; `is_crop` sets flag bit 0 of every frame's header."""

    images: tuple[bytes, ...]
    is_crop: bool
    source: str

    def message(self, frame_id: int) -> bytes:
        """One binary WebSocket message: the 8-byte protocol header, then the image."""
        image = self.images[frame_id % len(self.images)]
        return pack_frame(frame_id, image, is_crop=self.is_crop)

    @property
    def mean_bytes(self) -> float:
        return float(np.mean([len(b) for b in self.images]))


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A grayscale (H x W) or RGB (H x W x 3) image as a baseline JPEG, as the page's canvas
    encodes it."""
    pixels = np.ascontiguousarray(image if image.ndim == 3 else image[:, :, None])
    gray = pixels.shape[2] == 1
    return simplejpeg.encode_jpeg(pixels, quality, colorspace="GRAY" if gray else "RGB",
                                  colorsubsampling="Gray" if gray else "420")


def to_width(image: np.ndarray, width: int = FRAME_WIDTH) -> np.ndarray:
    """Scale to `width` px wide, keeping the aspect ratio (as the page's canvas does)."""
    h, w = image.shape[:2]
    if w == width:
        return image
    height = max(1, round(h * width / w))
    if image.ndim == 2:
        return resize(image, width, height)
    return np.stack([resize(np.ascontiguousarray(image[:, :, c]), width, height)
                     for c in range(image.shape[2])], axis=2)


def _shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """A slightly moved copy (edge-padded), so consecutive frames differ like a live camera's."""
    h, w = image.shape[:2]
    planes = [image] if image.ndim == 2 else [image[:, :, c] for c in range(image.shape[2])]
    moved = [pad_edges(p, max(dy, 0), max(-dy, 0), max(dx, 0), max(-dx, 0))
             [max(-dy, 0):max(-dy, 0) + h, max(-dx, 0):max(-dx, 0) + w] for p in planes]
    return moved[0] if image.ndim == 2 else np.stack(moved, axis=2)


SHIFTS = ((0, 0), (4, 0), (0, 4), (-4, 0), (0, -4), (3, 3), (-3, -3), (3, -3))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))


def find_face(gray: np.ndarray, detector: BlazeFace | HaarFallback) -> Box | None:
    """The largest face the server's detector finds in a frame, or None."""
    found = largest_first(detector.detect(gray))
    return found[0].box if found else None


def crops_from_gray(gray: np.ndarray, detector: BlazeFace | HaarFallback) -> list[bytes]:
    """Face crops of every size in CROP_SIDES from one grayscale frame, or [] if no face."""
    box = find_face(gray, detector)
    if box is None:
        return []
    return [encode_jpeg(crop_face(gray, box, side, detector.name)) for side in CROP_SIDES]


def _detector() -> BlazeFace | HaarFallback | None:
    """The server's own face detector (BlazeFace, else the Haar cascade), or None."""
    detector = load_detector()
    return None if isinstance(detector, HaarFallback) and not detector.available else detector


def astronaut_frames(kind: str) -> FrameSet:
    """The built-in set: scikit-image's astronaut (a real frontal face) as the page sends it."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit(
            "the built-in images need scikit-image (pip install 'streamfer[train]'); "
            "or pass --images DIR with your own face photos") from None
    rgb = to_width(data.astronaut())
    moved = [_shifted(rgb, dx, dy) for dx, dy in SHIFTS]
    if kind == "frames":
        return FrameSet(tuple(encode_jpeg(f) for f in moved), False, "astronaut (built in)")
    detector = _detector()
    if detector is None:
        raise SystemExit("client crops of the built-in image need a face detector and none "
                         "is installed (BlazeFace: `npm ci` in web/); pass --images DIR with "
                         "face crops (or use --kind frames against a server that has one)")
    crops: list[bytes] = []
    for frame in moved:
        crops += crops_from_gray(_luma(frame), detector)
    if not crops:
        raise RuntimeError("the face detector found no face in the astronaut image")
    return FrameSet(tuple(crops), True, "astronaut crops (built in)")


def _rgb(data: bytes) -> np.ndarray:
    try:
        with Image.open(BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadImage("not a decodable image") from None


def folder_frames(folder: Path, kind: str) -> FrameSet:
    """The user's own photos: frames are sent as 320 px wide JPEGs; crops are cut around the
    detected face, or, where none is found, the image is taken as an already-cut face."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no .jpg/.jpeg/.png images in {folder}")
    detector = _detector() if kind == "crops" else None
    if kind == "crops" and detector is None:
        log.warning("no face detector is installed: each image is taken as a face crop")
    images: list[bytes] = []
    for path in paths:
        data = path.read_bytes()
        try:
            gray = decode_gray(data)
            if kind == "frames":
                images.append(encode_jpeg(to_width(_rgb(data))))
                continue
        except BadImage:
            log.warning("skipping %s: not a decodable image", path)
            continue
        crops = crops_from_gray(gray, detector) if detector is not None else []
        if not crops:  # no face found: take the image itself as a face crop
            side = min(gray.shape[:2])
            y0, x0 = (gray.shape[0] - side) // 2, (gray.shape[1] - side) // 2
            square = gray[y0:y0 + side, x0:x0 + side]
            crops = [encode_jpeg(resize(square, s, s)) for s in CROP_SIDES]
        images += crops
    if not images:
        raise SystemExit(f"no decodable images in {folder}")
    return FrameSet(tuple(images), kind == "crops", f"{folder} ({len(paths)} files)")


def load_frames(kind: str, images: Path | None = None) -> FrameSet:
    """The frame set for `--kind` from `--images DIR`, or the built-in astronaut set."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    return folder_frames(images, kind) if images is not None else astronaut_frames(kind)
