"""streamfer.pixels, held to OpenCV's results (what serving used before it, and what the
accuracy figures were measured through): decoding, area resizing, padding, equalisation,
orientation. OpenCV is a test dependency only."""

from __future__ import annotations

from io import BytesIO

import cv2
import numpy as np
import pytest
from PIL import Image

from streamfer import pixels
from streamfer.imagecheck import BadImage


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def photo_bgr(astronaut_rgb: np.ndarray) -> np.ndarray:
    """A non-square colour photo with odd sides (each DCT reduction rounds)."""
    return cv2.cvtColor(astronaut_rgb[:347, :501], cv2.COLOR_RGB2BGR)


def test_jpeg_decodes_to_opencvs_grayscale_at_every_reduction(photo_bgr: np.ndarray) -> None:
    data = jpeg(photo_bgr)
    flags = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
             4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
    for factor, flag in flags.items():
        ours = pixels.decode_gray(data, factor)
        assert ours.dtype == np.uint8 and ours.flags.c_contiguous
        # libjpeg rounds each side up; OpenCV reports the same pixels, its last column or
        # row cut where it rounds down.
        assert ours.shape == (-(-347 // factor), -(-501 // factor))
        theirs = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        h, w = theirs.shape
        assert np.abs(ours[:h, :w].astype(int) - theirs).max() <= 1, factor


def test_png_and_gray_jpeg_decode_as_opencv_does(photo_bgr: np.ndarray) -> None:
    gray = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
    _, png = cv2.imencode(".png", gray)
    assert np.array_equal(pixels.decode_gray(png.tobytes()), gray)
    data = jpeg(gray)
    assert np.array_equal(pixels.decode_gray(data),
                          cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))
    _, png16 = cv2.imencode(".png", gray.astype(np.uint16) * 257)  # 16-bit: its high byte
    assert np.array_equal(pixels.decode_gray(png16.tobytes()), gray)


def test_a_jpeg_libjpeg_turbo_will_not_turn_gray_is_decoded_by_pillow(
        photo_bgr: np.ndarray) -> None:
    out = BytesIO()
    Image.fromarray(photo_bgr[:, :, ::-1]).convert("CMYK").save(out, "JPEG")
    gray = pixels.decode_gray(out.getvalue())
    assert gray.shape == photo_bgr.shape[:2] and gray.dtype == np.uint8
    assert abs(float(gray.mean()) - float(cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY).mean())) < 8


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff" + b"\0" * 64, b"not an image",
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 32])
def test_what_is_not_an_image_is_bad_image(data: bytes) -> None:
    with pytest.raises(BadImage):
        pixels.decode_gray(data)


def test_a_damaged_jpeg_decodes_as_far_as_it_goes_and_says_so(photo_bgr: np.ndarray) -> None:
    data = bytearray(jpeg(photo_bgr))
    data[len(data) // 2:len(data) // 2 + 40] = b"\x13" * 40
    warnings: list[str] = []
    gray = pixels.decode_gray(bytes(data[:-400]) + b"\xff\xd9", warnings=warnings)
    assert gray.shape == photo_bgr.shape[:2]
    assert warnings and warnings[0].startswith("libjpeg: "), warnings


@pytest.mark.parametrize("size", [(48, 48), (128, 96), (96, 128), (123, 77), (501, 1),
                                  (1, 1), (250, 347)])
def test_shrinking_is_opencvs_area_averaging(photo_bgr: np.ndarray,
                                              size: tuple[int, int]) -> None:
    gray = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
    noise = np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint8)
    for image in (gray, noise):
        ours = pixels.resize(image, *size)
        theirs = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        assert ours.shape == theirs.shape and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - theirs).max() <= 1, size


def test_growing_is_bilinear_and_same_size_is_untouched(photo_bgr: np.ndarray) -> None:
    small = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)[:40, :40].copy()
    ours = pixels.resize(small, 48, 48)
    theirs = cv2.resize(small, (48, 48), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours.astype(int) - theirs).max() <= 1
    assert pixels.resize(small, 40, 40) is small
    assert pixels.scale(small, 0.5).shape == (20, 20)


def test_padding_repeats_the_edges_as_opencv_does() -> None:
    image = np.random.default_rng(1).integers(0, 256, (17, 23), dtype=np.uint8)
    assert np.array_equal(pixels.pad_edges(image, 3, 0, 5, 2),
                          cv2.copyMakeBorder(image, 3, 0, 5, 2, cv2.BORDER_REPLICATE))


def test_equalisation_is_opencvs_to_the_bit(photo_bgr: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    images = [cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)[:48, :48].copy(),
              rng.integers(0, 256, (48, 48), dtype=np.uint8),
              rng.integers(100, 104, (48, 48), dtype=np.uint8),
              np.full((48, 48), 77, np.uint8)]
    for image in images:
        assert np.array_equal(pixels.equalize_hist(image), cv2.equalizeHist(image))


def test_every_exif_orientation_turns_as_opencv_does() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    expect = {1: image, 2: cv2.flip(image, 1), 3: cv2.rotate(image, cv2.ROTATE_180),
              4: cv2.flip(image, 0), 5: cv2.transpose(image),
              6: cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE),
              7: cv2.rotate(cv2.transpose(image), cv2.ROTATE_180),
              8: cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)}
    for orientation, want in expect.items():
        assert np.array_equal(pixels.orient(image, orientation), want), orientation
