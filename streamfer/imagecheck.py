"""Refuse an image too large to decode safely before any decoder allocates its pixels.

A small compressed file can claim a huge image (a "decompression bomb"): a 109 KB PNG can
declare 30000 x 30000 pixels, which OpenCV would decode into ~1 GB. Two guards, both needed:

- `check_image` reads only the header (with Pillow, which never decodes pixels to open a file)
  and refuses any image whose header it cannot read, any over the pixel limit, anything but
  JPEG and PNG, and a PNG whose chunks do not add up (a chunk length OpenCV would allocate).
  A header parser that skipped what it could not parse would let through exactly the files
  that fool it (an ancillary PNG chunk with a bad CRC, a zTXt chunk that inflates past 1 MB:
  Pillow gives up on those while libpng only warns and decodes on).
- `limit_opencv` sets OpenCV's own limit, OPENCV_IO_MAX_IMAGE_PIXELS, which OpenCV reads once,
  when cv2 is first imported; so the server calls it before importing anything that imports
  cv2 (streamfer/server/serve.py). It holds whatever a file's metadata says.

Everything that decodes untrusted bytes (/ws frames, /api/predict uploads) calls
`check_image` first.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from io import BytesIO

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

# Phone frames are far below this (4K video is 8.3 Mpx); a 16 Mpx 8-bit gray image is 16 MB.
MAX_PIXELS = 16_000_000
OPENCV_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
# What /ws and /api/predict take (docs/PROTOCOL.md). Pillow and OpenCV both pick these
# decoders by the same leading magic bytes, so the header read here is the one OpenCV decodes;
# other formats (OpenCV would decode TIFF, WebP, ...) are refused rather than trusted.
# (MPO is what Pillow calls a camera JPEG carrying extra pictures: OpenCV decodes the first.)
ACCEPTED = ("JPEG", "MPO", "PNG")


class BadImage(ValueError):
    """The bytes are not a decodable image (corrupt, empty, too large, or an unsupported format).

    Defined here, not in faces.py, so this module never imports cv2 (see limit_opencv)."""


def limit_opencv(max_pixels: int = MAX_PIXELS) -> bool:
    """Cap OpenCV's decoder at `max_pixels` (unless the environment already sets a cap).

    Returns False, and logs a warning, when cv2 was already imported: OpenCV read its limit
    then, so this process keeps OpenCV's default (about 1 gigapixel) and relies on
    `check_image` alone.
    """
    os.environ.setdefault(OPENCV_ENV, str(max_pixels))
    if "cv2" in sys.modules:
        log.warning("cv2 was imported before %s was set: OpenCV keeps its own pixel limit",
                    OPENCV_ENV)
        return False
    return True


def check_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone, or BadImage: a header it cannot read, too many
    pixels, a format other than JPEG/PNG, or PNG chunks that do not add up."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as img:
                w, h = img.size
                kind = img.format
                if kind not in ACCEPTED:
                    raise BadImage(f"{kind} images are not accepted: send JPEG or PNG")
                if w * h > max_pixels:
                    raise BadImage(f"image of {w}x{h} pixels exceeds the {max_pixels} pixel "
                                   f"limit ({kind})")
                if kind == "PNG":
                    # Walk every chunk and check its CRC: OpenCV allocates what a chunk's
                    # length field claims, so a tiny PNG whose IDAT claims 3.5 GB costs
                    # 3.5 GB; Pillow reads chunks in bounded blocks and refuses it.
                    img.verify()
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage("not a decodable JPEG/PNG image (unrecognised or malformed header)") \
            from None
    except Exception as exc:  # Pillow raises many types for a header it cannot read
        raise BadImage(f"not a decodable JPEG/PNG image (malformed header: "
                       f"{str(exc)[:120] or type(exc).__name__})") from None
    return w, h
