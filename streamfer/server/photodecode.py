"""Decoding ordinary phone photos for /api/predict (in the decode processes): small, the
right way up.

A 12-megapixel phone JPEG is 4-5 MB and 4000x3000 pixels, stored as the sensor saw it with
an EXIF tag saying how to turn it. The face detector only needs about a thousand pixels
across, so the JPEG is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg itself (DCT
scaling: streamfer.pixels.decode_gray's `factor`), which skips most of the decoding work, and
then turned as its EXIF orientation says. Only the header is read to choose the factor, and the
photo's pixel limit (imagecheck.PHOTO) applies to what is decoded, after that reduction: a
48-megapixel JPEG decodes at 1/8. HEIC (the iPhone's format) is decoded by libheif
(pillow-heif), which applies the container's own rotation. Kept apart from faces.py (camera
frames) on purpose: frames are small and need none of this. The photo's way through the
server is streamfer/server/photos.py.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from streamfer.faces import BadImage, decode_gray
from streamfer.imagecheck import PHOTO, ImageInfo, check_image
from streamfer.pixels import orient

PHOTO_MIN_SIDE = 960  # decode large enough that the longer side keeps >= this many pixels


def photo_header(data: bytes) -> tuple[str, int, int, int]:
    """(format, width, height, EXIF orientation 1-8) from the header alone."""
    try:
        with Image.open(BytesIO(data)) as img:
            orientation = 1
            if img.format in ("JPEG", "MPO"):
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            return str(img.format), img.size[0], img.size[1], orientation
    except Image.DecompressionBombError:
        pass  # judged on its size below, after DCT scaling, not on Pillow's own limit
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadImage("not a decodable JPEG/PNG image") from None
    # Pillow refused it as a bomb: read the size without its check.
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(BytesIO(data)) as img:
            return str(img.format), img.size[0], img.size[1], 1
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def reduction(fmt: str, width: int, height: int, min_side: int = PHOTO_MIN_SIDE) -> int:
    """The largest DCT scale (1, 2, 4, 8) that keeps the longer side >= `min_side`."""
    if fmt not in ("JPEG", "MPO"):
        return 1
    factor = 1
    while factor < 8 and max(width, height) / (factor * 2) >= min_side:
        factor *= 2
    return factor


def decode_heif(data: bytes) -> np.ndarray:
    """A HEIC/HEIF photo's primary image as upright 8-bit grayscale (libheif applies the
    container's rotation and mirroring)."""
    import pillow_heif

    try:
        heif = pillow_heif.open_heif(BytesIO(data), convert_hdr_to_8bit=True)
        img = heif.to_pillow()
    except Exception as exc:  # libheif's own complaint about a corrupt image
        raise BadImage(f"not a decodable HEIC image ({str(exc)[:120] or type(exc).__name__})"
                       ) from None
    return np.asarray(img.convert("L"))


def decode_photo(data: bytes, *, min_side: int = PHOTO_MIN_SIDE,
                 max_pixels: int = PHOTO.max_pixels,
                 info: ImageInfo | None = None, warnings: list[str] | None = None
                 ) -> tuple[np.ndarray, int]:
    """A photo's bytes -> (upright 8-bit grayscale, reduced in the decoder where it is large;
    the reduction factor: one decoded pixel is factor x factor photo pixels). `info`: what
    check_image(data, PHOTO) said (checked here when not given); `warnings`: as
    streamfer.pixels.decode_gray's."""
    if info is None:
        info = check_image(data, PHOTO)
    w, h = info.width, info.height
    if info.format == "HEIF":
        return decode_heif(data), 1
    factor = reduction(info.format, w, h, min_side)
    out_w, out_h = -(-w // factor), -(-h // factor)
    if out_w * out_h > max_pixels:
        raise BadImage(f"image of {w}x{h} pixels exceeds the {max_pixels} pixel limit"
                       + (f" even decoded at 1/{factor}" if factor > 1 else ""))
    if info.format not in ("JPEG", "MPO"):
        return decode_gray(data, warnings=warnings), 1
    orientation = photo_header(data)[3]
    return orient(decode_gray(data, factor, warnings), orientation), factor
