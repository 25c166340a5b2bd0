"""The images the load test streams: encoded once up front, so the client spends its time
sending and timing, not encoding (a phone encodes on its own CPU, not the server's).

Two kinds, as the page sends them: full camera frames (the server detects the face) or
client-made face crops (flag bit 0 set; the server skips detection). Crops are made the way
the page makes them: detect once, cut the face, encode a small grayscale JPEG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamfer.detect import FaceDetector
from streamfer.faces import BadImage, crop_face, decode_gray
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
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def to_width(image: np.ndarray, width: int = FRAME_WIDTH) -> np.ndarray:
    """Scale to `width` px wide, keeping the aspect ratio (as the page's canvas does)."""
    h, w = image.shape[:2]
    if w == width:
        return image
    height = max(1, round(h * width / w))
    interp = cv2.INTER_AREA if w > width else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """A slightly moved copy (edge-padded), so consecutive frames differ like a live camera's."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]),
                          borderMode=cv2.BORDER_REPLICATE)


SHIFTS = ((0, 0), (4, 0), (0, 4), (-4, 0), (0, -4), (3, 3), (-3, -3), (3, -3))


def crops_from_gray(gray: np.ndarray, detector: FaceDetector) -> list[bytes]:
    """Face crops of every size in CROP_SIDES from one grayscale frame, or [] if no face."""
    box = detector.detect(gray)
    if box is None:
        return []
    return [encode_jpeg(crop_face(gray, box, side)) for side in CROP_SIDES]


def astronaut_frames(kind: str) -> FrameSet:
    """The built-in set: scikit-image's astronaut (a real frontal face) as the page sends it."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit(
            "the built-in images need scikit-image (pip install 'streamfer[train]'); "
            "or pass --images DIR with your own face photos") from None
    rgb = to_width(data.astronaut())
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    moved = [_shifted(bgr, dx, dy) for dx, dy in SHIFTS]
    if kind == "frames":
        return FrameSet(tuple(encode_jpeg(f) for f in moved), False, "astronaut (built in)")
    detector = FaceDetector()
    if not detector.available:  # OpenCV 5 wheels ship no Haar cascades
        raise SystemExit("client crops of the built-in image need a face detector and this "
                         "OpenCV build has none; pass --images DIR with face crops (or use "
                         "--kind frames against a server that has one)")
    crops: list[bytes] = []
    for frame in moved:
        crops += crops_from_gray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), detector)
    if not crops:
        raise RuntimeError("the face detector found no face in the astronaut image")
    return FrameSet(tuple(crops), True, "astronaut crops (built in)")


def folder_frames(folder: Path, kind: str) -> FrameSet:
    """The user's own photos: frames are sent as 320 px wide JPEGs; crops are cut around the
    detected face, or, where none is found, the image is taken as an already-cut face."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no .jpg/.jpeg/.png images in {folder}")
    detector = FaceDetector()
    if kind == "crops" and not detector.available:
        log.warning("this OpenCV build has no face detector: each image is taken as a face crop")
    images: list[bytes] = []
    for path in paths:
        data = path.read_bytes()
        try:
            gray = decode_gray(data)
        except BadImage:
            log.warning("skipping %s: not a decodable image", path)
            continue
        if kind == "frames":
            color = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            images.append(encode_jpeg(to_width(color)))
            continue
        crops = crops_from_gray(gray, detector) if detector.available else []
        if not crops:  # no face found: take the image itself as a face crop
            side = min(gray.shape[:2])
            y0, x0 = (gray.shape[0] - side) // 2, (gray.shape[1] - side) // 2
            square = gray[y0:y0 + side, x0:x0 + side]
            crops = [encode_jpeg(cv2.resize(square, (s, s), interpolation=cv2.INTER_AREA))
                     for s in CROP_SIDES]
        images += crops
    if not images:
        raise SystemExit(f"no decodable images in {folder}")
    return FrameSet(tuple(images), kind == "crops", f"{folder} ({len(paths)} files)")


def load_frames(kind: str, images: Path | None = None) -> FrameSet:
    """The frame set for `--kind` from `--images DIR`, or the built-in astronaut set."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    return folder_frames(images, kind) if images is not None else astronaut_frames(kind)
