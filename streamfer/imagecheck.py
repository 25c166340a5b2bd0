"""Refuse an image whose decoding would cost too much before any decoder touches it.

A small compressed file can claim a huge image (a "decompression bomb": a 109 KB PNG can
declare 30000 x 30000 pixels) or a huge amount of work (a "scan bomb": a progressive JPEG may
repeat its scans at a few bytes each, and every scan visits every block of the image). So the
cost of a decode is bounded before it starts, per entry point (`ImageLimits`: camera crops,
full camera frames, uploaded photos): pixels, side lengths, aspect ratio and JPEG scans.

- `check_image` reads only the header. JPEG: `jpeg_header` walks the markers the way
  libjpeg finds them (skipping entropy-coded data and fill bytes as it does), so the frame
  header and the number of scans it counts are the ones the decoder will see; it accepts
  baseline, extended and progressive Huffman JPEGs only (arithmetic, lossless and
  hierarchical JPEGs are refused: no camera writes them). PNG: Pillow reads the header and
  walks every chunk, checking its CRC: a header parser that skipped what it could not parse
  would let through exactly the files that fool it (an ancillary chunk with a bad CRC, a zTXt
  chunk that inflates past 1 MB: Pillow gives up on those while libpng only warns and decodes
  on), and OpenCV allocates what a chunk's length field claims. HEIC/HEIF (photos only):
  libheif reads the container's boxes, never the coded pixels. Anything else is refused.
- `limit_opencv` sets OpenCV's own limit, OPENCV_IO_MAX_IMAGE_PIXELS, which OpenCV reads once,
  when cv2 is first imported; so the server calls it before importing anything that imports
  cv2 (streamfer/server/serve.py), and the decode processes inherit it. It holds whatever a
  file's metadata says.

The checks run where the decoding runs (streamfer/server/decoder.py: worker processes with a
time budget per image), never on the server's event loop.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import sys
import warnings
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageLimits:
    """What one entry point decodes at most (docs/PROTOCOL.md lists them)."""

    name: str
    max_pixels: int  # decoded pixels (for a photo: after DCT scaling)
    max_side: int  # the longer side, as the header declares it
    max_aspect: float  # longer side / shorter side
    max_scans: int  # JPEG scans (baseline camera JPEGs have 1, progressive photos ~10)
    budget_s: float  # wall-clock seconds one decode may take before its process is killed
    max_declared_pixels: int = 0  # JPEG before DCT scaling (photos); 0: the same as max_pixels
    photo: bool = False  # decoded as a photo: DCT-reduced JPEG, EXIF orientation, HEIC too

    @property
    def declared_pixels(self) -> int:
        return self.max_declared_pixels or self.max_pixels


# /ws crops: the page sends 96 px faces; any client's crop is resized to the model's input.
CROP = ImageLimits("crop", max_pixels=1024 * 1024, max_side=2048, max_aspect=4.0, max_scans=12,
                   budget_s=0.25)
# /ws full frames: a camera frame, up to 1280x1024 (the page sends 320-640 px ones).
FRAME = ImageLimits("frame", max_pixels=1280 * 1024, max_side=2048, max_aspect=4.0,
                    max_scans=12, budget_s=0.5)
# /api/predict: phone photos; JPEGs are decoded at 1/2-1/8 size (streamfer/server/photodecode.py),
# so their declared size may be larger (a 48-megapixel 8000x6000 photo passes).
PHOTO = ImageLimits("photo", max_pixels=16_000_000, max_side=16384, max_aspect=16.0,
                    max_scans=32, budget_s=5.0, max_declared_pixels=64_000_000, photo=True)
LIMITS = {limits.name: limits for limits in (CROP, FRAME, PHOTO)}

# OpenCV's own cap: the most pixels any entry point lets a header declare.
MAX_PIXELS = max(limits.declared_pixels for limits in LIMITS.values())
OPENCV_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
MAX_SEGMENTS = 256  # JPEG marker segments but scans (a phone photo has ~10-30)
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
# The frame headers accepted: baseline, extended sequential and progressive, Huffman-coded.
SOF_ACCEPTED = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
SOF_REFUSED = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical progressive",
               0xC7: "hierarchical lossless", 0xC9: "arithmetic-coded",
               0xCA: "arithmetic-coded progressive", 0xCB: "arithmetic-coded lossless",
               0xCD: "arithmetic-coded hierarchical",
               0xCE: "arithmetic-coded hierarchical progressive",
               0xCF: "arithmetic-coded hierarchical lossless"}
# The next marker as libjpeg finds it: 0xFF (the last of any fill 0xFFs), then a byte that is
# neither 0 (a stuffed 0xFF in entropy-coded data), nor 0xFF, nor a restart marker (part of a
# scan's data; ignored between segments). One byte pair, so the search is linear.
_NEXT_MARKER = re.compile(rb"\xff([^\x00\xd0-\xd7\xff])")
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


class BadImage(ValueError):
    """The bytes are not a decodable image (corrupt, empty, too costly, or an unsupported
    format). Defined here, not in faces.py, so this module never imports cv2 (see
    limit_opencv)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: the format (Pillow's name), the size, and for a JPEG its coding
    and number of scans."""

    format: str
    width: int
    height: int
    scans: int = 0
    coding: str = ""


def limit_opencv(max_pixels: int = MAX_PIXELS) -> bool:
    """Cap OpenCV's decoder at `max_pixels` (unless the environment already sets a cap).

    Returns False, and logs a warning, when cv2 was already imported: OpenCV read its limit
    then, so this process keeps OpenCV's default (about 1 gigapixel) and relies on
    `check_image` alone.
    """
    global _LIMITED_BEFORE_CV2
    os.environ.setdefault(OPENCV_ENV, str(max_pixels))
    if _LIMITED_BEFORE_CV2:  # an earlier call set it in time (each entry point calls this)
        return True
    if "cv2" in sys.modules:
        log.warning("cv2 was imported before %s was set: OpenCV keeps its own pixel limit",
                    OPENCV_ENV)
        return False
    _LIMITED_BEFORE_CV2 = True
    return True


_LIMITED_BEFORE_CV2 = False


def is_heif(data: bytes) -> bool:
    """An ISO base media file whose brand says HEIF/HEIC (what iPhones save photos as)."""
    return len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def check_image(data: bytes, limits: ImageLimits = FRAME) -> ImageInfo:
    """The header's ImageInfo, or BadImage: a header it cannot read, a format `limits` does
    not take, or an image over any of `limits`. Reads no pixel data."""
    if not data:
        raise BadImage("empty image")
    if data.startswith(JPEG_MAGIC):
        info = jpeg_header(data, limits)
    elif data.startswith(PNG_MAGIC):
        info = _png_header(data)
    elif is_heif(data):
        if not limits.photo:
            raise BadImage(f"HEIC images are accepted as photos (/api/predict) only, not as "
                           f"a {limits.name}: send JPEG or PNG")
        info = heif_header(data)
    else:
        name = _name(data)
        formats = "JPEG, PNG or HEIC" if limits.photo else "JPEG or PNG"
        raise BadImage(f"{name} images are not accepted: send {formats}" if name else
                       f"not a decodable JPEG/PNG image (unrecognised format: send {formats})")
    _check_size(info, limits)
    return info


def _check_size(info: ImageInfo, limits: ImageLimits) -> None:
    w, h = info.width, info.height
    what = f"{limits.name} of {w}x{h} pixels ({info.format})"
    if w < 1 or h < 1:
        raise BadImage(f"{what} has no pixels")
    if max(w, h) > limits.max_side:
        raise BadImage(f"{what} exceeds the {limits.max_side} pixel side limit")
    if max(w, h) / min(w, h) > limits.max_aspect:
        raise BadImage(f"{what} exceeds the aspect ratio limit of {limits.max_aspect:g}:1")
    reducible = info.format in ("JPEG", "MPO")
    cap = limits.declared_pixels if reducible else limits.max_pixels
    if w * h > cap:
        raise BadImage(f"{what} exceeds the {cap} pixel limit")


def _name(data: bytes) -> str:
    """What an image we do not take is, for the refusal (Pillow's name, from the magic);
    "" when the bytes are no known image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "AVIF" if data[8:12] in (b"avif", b"avis") else "ISO media"
    for magic, name in ((b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
                        (b"MM\x00*", "TIFF")):
        if data.startswith(magic):
            return name
    return ""


def jpeg_header(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Walk a JPEG's markers as libjpeg reads them: the frame header's size and coding and
    the number of scans, or BadImage. Cost: one regular-expression pass over the bytes (in
    C) plus at most MAX_SEGMENTS segments and max_scans scans."""
    pos, n = 2, len(data)
    frame: tuple[int, int, str] | None = None
    scans = segments = 0
    while True:
        m = _NEXT_MARKER.search(data, pos)
        if m is None:
            break  # no EOI: libjpeg decodes what it has (a truncated file), as do we
        marker, pos = m.group(1)[0], m.end()
        if marker == 0xD9:  # EOI: anything after it (an MPO's other pictures) is not decoded
            break
        if marker in _STANDALONE:
            continue
        segments += marker != 0xDA  # scans have their own limit
        if segments > MAX_SEGMENTS:
            raise BadImage(f"JPEG with more than {MAX_SEGMENTS} marker segments besides its "
                           "scans")
        if pos + 2 > n:
            raise BadImage("not a decodable JPEG image (truncated inside a marker segment)")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            raise BadImage(f"not a decodable JPEG image (marker segment 0x{marker:02X} runs "
                           "past the end of the file)")
        if marker in SOF_REFUSED:
            raise BadImage(f"{SOF_REFUSED[marker]} JPEGs are not accepted: send a baseline or "
                           "progressive JPEG")
        if marker in SOF_ACCEPTED:
            if frame is not None:
                raise BadImage("not a decodable JPEG image (more than one frame header)")
            if length < 8:
                raise BadImage("not a decodable JPEG image (frame header too short)")
            h, w = struct.unpack_from(">HH", data, pos + 3)
            if h == 0:
                raise BadImage("JPEG whose height is set later in the file (DNL) is not "
                               "accepted")
            frame = (w, h, SOF_ACCEPTED[marker])
        elif marker == 0xDA:  # SOS: a scan; its entropy-coded data runs to the next marker
            if frame is None:
                raise BadImage("not a decodable JPEG image (a scan before the frame header)")
            scans += 1
            if scans > limits.max_scans:
                raise BadImage(f"JPEG with more than {limits.max_scans} scans (the {limits.name} "
                               "limit): each scan costs a pass over the whole image")
        pos += length
    if frame is None or scans == 0:
        raise BadImage("not a decodable JPEG image (no frame header or no scan)")
    w, h, coding = frame
    return ImageInfo("JPEG", w, h, scans, coding)


def _png_header(data: bytes) -> ImageInfo:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data), formats=["PNG"]) as img:
                w, h = img.size
                # Walk every chunk and check its CRC: OpenCV allocates what a chunk's length
                # field claims, so a tiny PNG whose IDAT claims 3.5 GB costs 3.5 GB; Pillow
                # reads chunks in bounded blocks and refuses it.
                img.verify()
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage("not a decodable PNG image (malformed header)") from None
    except Exception as exc:  # Pillow raises many types for a header it cannot read
        raise BadImage(f"not a decodable PNG image (malformed header: "
                       f"{str(exc)[:120] or type(exc).__name__})") from None
    return ImageInfo("PNG", w, h)


def heif_header(data: bytes) -> ImageInfo:
    """A HEIC/HEIF's primary image size from its container (pillow-heif, i.e. libheif)."""
    import pillow_heif

    try:
        heif = pillow_heif.open_heif(BytesIO(data), convert_hdr_to_8bit=True)
        w, h = heif.size
    except Exception as exc:  # libheif's own complaint about a malformed container
        raise BadImage(f"not a decodable HEIC image ({str(exc)[:120] or type(exc).__name__})"
                       ) from None
    return ImageInfo("HEIF", w, h)
