"""Open a recording with OpenCV's FFmpeg backend (the `[video]` extra), check it against the
limits before any decoding, and hand out every Nth frame as grayscale.

Checks come first and cost a header read each: the file size, that FFmpeg recognises a
container with a video stream, a decodable first frame (else the codec is not supported),
the frame size and the duration the container states. The duration is enforced again
while decoding (a container may understate it): frames past the limit end the video with
an error. Only one decoded frame is held here at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamfer.optional import import_cv2

if TYPE_CHECKING:
    import cv2

log = logging.getLogger(__name__)

# Why a video was refused (`code` of the error; docs/PROTOCOL.md, /api/video).
NOT_A_VIDEO = "not_a_video"
UNSUPPORTED_CODEC = "unsupported_codec"
TOO_LONG = "too_long"
TOO_LARGE = "too_large"
NOT_INSTALLED = "not_installed"  # /api/video on a server without OpenCV (the [video] extra)
VIDEO_ERRORS = (NOT_A_VIDEO, UNSUPPORTED_CODEC, TOO_LONG, TOO_LARGE)

# Default limits, for the command line and the server's --max-video-* flags.
MAX_VIDEO_BYTES = 512 * 1024 * 1024
MAX_VIDEO_SECONDS = 600.0
MAX_VIDEO_PIXELS = 3840 * 2160

# The first bytes of the containers FFmpeg reads that phones and cameras write: a file that
# starts like one but will not decode holds a codec this FFmpeg lacks (or is damaged).
_CONTAINERS = ((4, b"ftyp", "MP4/MOV"), (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
               (0, b"RIFF", "AVI"), (0, b"OggS", "Ogg"), (0, b"FLV", "FLV"),
               (0, b"\x00\x00\x01\xba", "MPEG-PS"))

# Still images FFmpeg would also open, as a one-frame "video".
_IMAGES = ((0, b"\xff\xd8\xff", "JPEG"), (0, b"\x89PNG", "PNG"), (0, b"GIF8", "GIF"),
           (0, b"BM", "BMP"), (8, b"WEBP", "WebP"))


class VideoError(ValueError):
    """A video refused, with a `code` from VIDEO_ERRORS a client can act on."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_seconds: float
    max_pixels: int


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # as the container states it (an estimate for some formats)
    codec: str
    bytes: int

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def to_json(self) -> dict[str, object]:
        return {"width": self.width, "height": self.height, "fps": round(self.fps, 3),
                "frames": self.frames, "seconds": round(self.seconds, 3),
                "codec": self.codec, "bytes": self.bytes}


def _container(path: Path) -> str | None:
    """The container the file's first bytes announce, if any (VideoError for an image)."""
    with path.open("rb") as f:
        head = f.read(16)
    for offset, magic, name in _IMAGES:
        if head[offset:offset + len(magic)] == magic:
            raise VideoError(f"a {name} image, not a video (photos go to /api/predict)",
                             NOT_A_VIDEO)
    for offset, magic, name in _CONTAINERS:
        if head[offset:offset + len(magic)] == magic and (name != "AVI" or
                                                           head[8:12] == b"AVI "):
            return name
    return None


VIDEO_WHAT = "reading video files"  # what OpenCVMissing says needs OpenCV


def _fourcc(cap: cv2.VideoCapture) -> str:
    cv2 = import_cv2(VIDEO_WHAT)
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    text = code.to_bytes(4, "little").decode("ascii", "replace")
    return text if text.isprintable() and code else "unknown"


def open_video(path: str | Path, limits: Limits) -> tuple[cv2.VideoCapture, VideoInfo]:
    """The opened capture and what it holds, or VideoError (checked in the order above)."""
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise VideoError(f"video of {size} bytes exceeds the limit of {limits.max_bytes}",
                         TOO_LARGE)
    container = _container(path)
    cv2 = import_cv2(VIDEO_WHAT)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        if container is None:
            raise VideoError("not a video FFmpeg can read (no known container, no video "
                             "stream)", NOT_A_VIDEO)
        raise VideoError(f"a {container} file whose video cannot be decoded here: an "
                         "unsupported codec, or a damaged file", UNSUPPORTED_CODEC)
    try:
        codec = _fourcc(cap)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w <= 0 or h <= 0:
            raise VideoError("no video stream in the file", NOT_A_VIDEO)
        if w * h > limits.max_pixels:
            raise VideoError(f"frames of {w}x{h} exceed the limit of {limits.max_pixels} "
                             "pixels", TOO_LARGE)
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        if not 0 < fps <= 1000:
            raise VideoError(f"the video states no usable frame rate ({fps:g})",
                             UNSUPPORTED_CODEC)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if frames / fps > limits.max_seconds:
            raise VideoError(f"video of {frames / fps:.1f} s exceeds the limit of "
                             f"{limits.max_seconds:g} s", TOO_LONG)
        if not cap.grab():
            raise VideoError(f"the first frame ({codec}) cannot be decoded: an unsupported "
                             "codec, or a damaged file", UNSUPPORTED_CODEC)
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    except BaseException:
        cap.release()
        raise
    return cap, VideoInfo(w, h, fps, max(frames, 1), codec, size)


def frames(cap: cv2.VideoCapture, info: VideoInfo, every: int,
           limits: Limits) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in s, grayscale frame) of frames 0, N, 2N, ...; the frames between
    are decoded (inter-frame codecs need them) but not converted. Releases `cap` at the end."""
    cv2 = import_cv2(VIDEO_WHAT)
    if every < 1:
        raise ValueError("every must be >= 1")
    max_frames = int(limits.max_seconds * info.fps) + 1
    try:
        index = 0
        while cap.grab():
            if index >= max_frames:
                raise VideoError(f"video runs past the limit of {limits.max_seconds:g} s "
                                 "(its header said less)", TOO_LONG)
            if index % every == 0:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    break
                gray = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                yield index, index / info.fps, gray
            index += 1
    finally:
        cap.release()
