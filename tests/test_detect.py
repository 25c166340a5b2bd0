"""BlazeFace on the server (streamfer.detect): the PyTorch port against the LiteRT reference
runtime on the same input, the server's two runtimes (LiteRT on the CPU, the port for a GPU's
batched stage) against each other, their boxes on a real face, batches, regions and the
fallback."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from streamfer.detect import (
    SPECS,
    WEIGHTS_DIR,
    BlazeFace,
    HaarFallback,
    load_detector,
    ssd_anchors,
    track_region,
)
from streamfer.faces import FRAMING, crop_face
from streamfer.tflite_torch import TfliteNet

needs_weights = pytest.mark.skipif(
    not (WEIGHTS_DIR / SPECS["short"].file).is_file(),
    reason=f"BlazeFace weights not installed at {WEIGHTS_DIR} (`npm ci` in web/)")
ASTRONAUT_NOSE = (224, 114)


@pytest.fixture(scope="module")
def gray(astronaut_rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)


@pytest.fixture(scope="module", params=["litert", "torch"])
def blaze(request: pytest.FixtureRequest) -> BlazeFace:
    """Each test below runs on both runtimes: LiteRT (the CPU's) and the PyTorch port."""
    if not (WEIGHTS_DIR / SPECS["short"].file).is_file():
        pytest.skip("BlazeFace weights not installed (`npm ci` in web/)")
    torch.set_num_threads(1)
    return BlazeFace(runtime=request.param)


def on_the_nose(box: object, scale: float = 1.0) -> bool:
    cx, cy = ASTRONAUT_NOSE[0] * scale, ASTRONAUT_NOSE[1] * scale
    return box.x <= cx <= box.x + box.w and box.y <= cy <= box.y + box.h  # type: ignore


def test_anchors_follow_mediapipes_short_range_layout() -> None:
    a = ssd_anchors(SPECS["short"])
    assert a.shape == (896, 2)
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])  # 16 x 16 grid, 2 per cell
    np.testing.assert_allclose(a[1], a[0])
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8])  # then 8 x 8, 6 per cell
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8])


@needs_weights
@pytest.mark.parametrize("variant", ["short", "full"])
def test_port_matches_the_litert_runtime(variant: str, gray: np.ndarray) -> None:
    """Same input, same raw outputs as Google's own runtime, to 1e-3 (float32 vs XNNPACK
    summation order; the regressors reach ~150, the logits ~35)."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    path = WEIGHTS_DIR / SPECS[variant].file
    net = TfliteNet(path).eval()
    h, w = net.input_hw
    rng = np.random.default_rng(0)
    face = cv2.resize(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), (w, h)).astype(np.float32)
    face = face / 127.5 - 1.0
    for x in (face[None], rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)):
        interp = litert.Interpreter(model_path=str(path))
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        ref = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
        with torch.inference_mode():
            outs = net(torch.from_numpy(x).permute(0, 3, 1, 2))
        for name, out in zip(net.output_names, outs, strict=True):
            np.testing.assert_allclose(out.numpy(), ref[name], atol=1e-3, rtol=1e-4)


@needs_weights
@pytest.mark.parametrize("variant", ["short", "full"])
def test_the_cpus_litert_runtime_and_the_gpus_port_agree(variant: str,
                                                         gray: np.ndarray) -> None:
    """The server's two runtimes of one file: the same raw outputs on real and random inputs
    (in one batch: LiteRT runs them one by one), so the same boxes on the CPU and a GPU."""
    litert = BlazeFace(variant, runtime="litert")
    port = BlazeFace(variant, runtime="torch")
    assert litert.net.device == port.net.device == "cpu"
    assert "LiteRT" in litert.description and "PyTorch" in port.description
    rng = np.random.default_rng(1)
    inputs = np.stack([litert.prepare(gray)[0], litert.prepare(np.fliplr(gray).copy())[0],
                       rng.integers(0, 256, (litert.size,) * 2, dtype=np.uint8)])
    (r1, s1), (r2, s2) = litert.infer(inputs), port.infer(inputs)
    assert r1.shape == r2.shape == (3, len(litert.anchors), 16) and s1.shape == s2.shape
    assert r1.dtype == s1.dtype == np.float32
    np.testing.assert_allclose(r1, r2, atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert [d.box for d in litert.detect_photo(gray)] == [d.box for d in port.detect_photo(gray)]


def test_litert_runs_on_the_cpu_only() -> None:
    with pytest.raises(ValueError, match="CPU only"):
        BlazeFace(device="cuda", runtime="litert")


@needs_weights
def test_gray_input_folds_the_first_layer_exactly() -> None:
    path = WEIGHTS_DIR / SPECS["short"].file
    rgb, gray = TfliteNet(path).eval(), TfliteNet(path, gray_input=True).eval()
    x = torch.rand(2, 1, 128, 128) * 2 - 1
    with torch.inference_mode():
        for a, b in zip(rgb(x.expand(2, 3, 128, 128)), gray(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_finds_the_astronauts_face(blaze: BlazeFace, gray: np.ndarray) -> None:
    found = blaze.detect(gray)
    assert len(found) == 1 and found[0].score > 0.5
    assert on_the_nose(found[0].box) and 70 <= found[0].box.w <= 140, found
    assert blaze.detect(np.full((240, 320), 128, np.uint8)) == []


def test_a_batch_gives_the_same_boxes_as_one_at_a_time(blaze: BlazeFace,
                                                       gray: np.ndarray) -> None:
    frames = [gray, cv2.resize(gray, (320, 240)), np.fliplr(gray).copy(), gray[100:400, 50:450],
              np.full((200, 200), 90, np.uint8)]
    prepared = [blaze.prepare(f) for f in frames]
    regress, scores = blaze.infer(np.stack([x for x, _ in prepared]))
    for i, (f, (_, where)) in enumerate(zip(frames, prepared, strict=True)):
        batched = blaze.decode(regress[i], scores[i], where, f.shape[:2])
        alone = blaze.detect(f)
        assert [d.box for d in batched] == [d.box for d in alone]
        np.testing.assert_allclose([d.score for d in batched], [d.score for d in alone],
                                   atol=1e-5)


def test_tracking_region_finds_the_same_face(blaze: BlazeFace, gray: np.ndarray) -> None:
    whole = blaze.detect(gray)[0].box
    region = track_region(whole)
    assert region[2] < gray.shape[1]  # a smaller input than the frame
    found = blaze.detect(gray, region)
    assert len(found) == 1 and on_the_nose(found[0].box)
    b = found[0].box
    assert abs(b.x - whole.x) <= 6 and abs(b.y - whole.y) <= 6 and abs(b.w - whole.w) <= 8


def test_a_tight_crop_is_found_with_a_margin(blaze: BlazeFace, gray: np.ndarray) -> None:
    """A photo that is all face (no margin), as photo collections hold: the padded search
    finds it, with a box covering most of the image."""
    box = blaze.detect(gray)[0].box
    tight = crop_face(gray, box, 160, "blazeface")
    found = blaze.detect(tight, pad=0.3)
    assert found and found[0].box.w >= 0.5 * 160, found


def test_framing_table_names_every_detector() -> None:
    """Server (haar, blazeface) and page (blazeface, shape) detectors, one entry each."""
    assert set(FRAMING) == {"haar", "blazeface", "shape"}
    assert all(set(v) == {"scale", "shift_y"} for v in FRAMING.values())


def test_without_the_weights_the_haar_cascade_takes_over(tmp_path: Path,
                                                         gray: np.ndarray) -> None:
    detector = load_detector("cpu", weights_dir=tmp_path)
    assert isinstance(detector, HaarFallback) and "Haar" in detector.description
    if detector.available:
        found = detector.detect(gray)
        assert len(found) == 1 and on_the_nose(found[0].box)
    with pytest.raises(FileNotFoundError, match="npm ci"):
        BlazeFace(weights_dir=tmp_path)
