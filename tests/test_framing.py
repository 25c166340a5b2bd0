"""training.framing measures the framing it is shown (cut by the server's own crop geometry)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamfer.detect import FaceDetector
from streamfer.faces import crop_at
from training.framing import measure_one


@pytest.fixture(scope="module")
def astronaut_gray(astronaut_rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)


@pytest.mark.parametrize(("scale", "shift_y"), [(1.03, 0.0), (1.4, 0.0), (1.2, 0.08)])
def test_measure_recovers_the_framing_of_a_48px_face(astronaut_gray: np.ndarray, scale: float,
                                                     shift_y: float) -> None:
    """Frame the astronaut as a 48x48 FER-like face; measuring it gives the framing back."""
    box = FaceDetector().detect(astronaut_gray)
    assert box is not None
    face = crop_at(astronaut_gray, box, 48, scale, shift_y)
    got = measure_one(face, FaceDetector(min_face_fraction=0.3), upsample=192, pad=0.25)
    assert got is not None
    got_scale, got_shift_y, got_shift_x = got
    assert got_scale == pytest.approx(scale, rel=0.08)
    assert got_shift_y == pytest.approx(shift_y, abs=0.03)
    assert abs(got_shift_x) < 0.03


@pytest.mark.parametrize(("scale", "shift_y"), [(1.2, -0.073), (1.4, 0.0)])
def test_measure_recovers_the_framing_with_blazeface(astronaut_gray: np.ndarray, scale: float,
                                                     shift_y: float) -> None:
    """The same calibration with BlazeFace's boxes (`--detector blazeface`)."""
    from streamfer.detect import SPECS, WEIGHTS_DIR, BlazeFace
    from training.framing import BestBox

    if not (WEIGHTS_DIR / SPECS["short"].file).is_file():
        pytest.skip("BlazeFace weights not installed (`npm ci` in web/)")
    finder = BestBox(BlazeFace())
    box = finder.detect(astronaut_gray)
    assert box is not None
    face = crop_at(astronaut_gray, box, 48, scale, shift_y)
    got = measure_one(face, finder, upsample=192, pad=0.25)
    assert got is not None
    assert got[0] == pytest.approx(scale, rel=0.08)
    assert got[1] == pytest.approx(shift_y, abs=0.03)
    assert abs(got[2]) < 0.03
