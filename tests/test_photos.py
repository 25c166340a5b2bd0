"""Phone photos (streamfer.server.photodecode): EXIF orientation as Pillow applies it, JPEGs
decoded at reduced size by libjpeg, and size limits judged on what is actually decoded."""

from __future__ import annotations

from io import BytesIO

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from streamfer.faces import BadImage
from streamfer.server.photodecode import decode_photo, orient, photo_header, reduction


def jpeg(img: Image.Image, orientation: int = 1, quality: int = 90) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = BytesIO()
    img.save(buf, "JPEG", quality=quality, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillows_exif_transpose(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 256, (40, 64), dtype=np.uint8))
    data = jpeg(stored, orientation, quality=100)
    with Image.open(BytesIO(data)) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("L"))
    got, factor = decode_photo(data)
    assert factor == 1 and photo_header(data)[3] == orientation
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 2.0  # JPEG decoders differ


def test_orient_is_a_no_op_for_upright_images() -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(orient(a, 1), a)


@pytest.mark.parametrize(("w", "h", "fmt", "factor"), [
    (4000, 3000, "JPEG", 4), (1920, 1080, "JPEG", 2), (1200, 900, "JPEG", 1),
    (9000, 12000, "JPEG", 8), (4000, 3000, "PNG", 1)])
def test_reduction_keeps_about_a_thousand_pixels(w: int, h: int, fmt: str, factor: int) -> None:
    assert reduction(fmt, w, h) == factor


def test_a_12_megapixel_jpeg_decodes_at_a_quarter(astronaut_rgb: np.ndarray) -> None:
    big = cv2.resize(astronaut_rgb, (4000, 3000))
    gray, factor = decode_photo(jpeg(Image.fromarray(big)))
    assert factor == 4 and gray.shape == (750, 1000) and gray.dtype == np.uint8


def test_pixel_limit_applies_after_reduction() -> None:
    ok, png = cv2.imencode(".png", np.zeros((5000, 4000), np.uint8))  # 20 Mpx, no DCT scaling
    assert ok
    with pytest.raises(BadImage, match="pixel limit"):
        decode_photo(png.tobytes())
    with pytest.raises(BadImage, match="decodable"):
        decode_photo(b"not an image")
    with pytest.raises(BadImage, match="empty"):
        decode_photo(b"")
