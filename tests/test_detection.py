"""The page's detection engine (web/detection/: BlazeFace on LiteRT.js, in a Web Worker) in a
real headless Chromium, loaded from the real server's /vendor/ URLs with nothing else
reachable: it finds a real face where the server's own BlazeFace finds it, a face too far
for the short-range network (60 px wide in a 640x480 frame), nothing in a face-free frame,
and runs in a Worker; the page streams crops with it.

Needs /usr/bin/chromium, the `playwright` package and `(cd web && npm ci)`; skips without
them (tests/kit/browserkit.py skip_or_fail: STREAMFER_REQUIRE_BROWSER=1 makes a skip an error).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from streamfer.server import vendor
from tests.kit.browserkit import (
    CHROMIUM,
    ROOT,
    Server,
    counts,
    need_chromium,
    open_page,
    phone,
    skip_or_fail,
)
from tests.kit.fakecam import gradient_frames, scene, shaking, write_y4m

pytestmark = pytest.mark.browser

WAIT_MS = 30_000
INSTALLED = vendor.find(ROOT / "web")

need_chromium()
if INSTALLED is None or INSTALLED.runtime is None:
    skip_or_fail("web/node_modules has no detection runtime: `(cd web && npm ci)`")

DETECT = """async ([base, png, options, repeat]) => {
  const { createFaceDetector } = await import("/detection/index.js");
  const det = await createFaceDetector({ baseUrl: base, ...options });
  const img = new Image();
  img.src = "data:image/png;base64," + png;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.width;
  canvas.height = img.height;
  canvas.getContext("2d").drawImage(img, 0, 0);
  const runs = [];
  for (let i = 0; i < repeat; i++) runs.push(await det.detect(canvas));
  det.close();
  return { name: det.name, runtime: det.runtime, inWorker: det.inWorker, runs };
}"""


@pytest.fixture(scope="module")
def head(astronaut_rgb: np.ndarray) -> np.ndarray:
    return astronaut_rgb[20:320, 110:410]  # her face in the middle, as in a webfaces photo


def far_scene(head: np.ndarray, face_px: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """`head` scaled so that the server's BlazeFace box is `face_px` wide, in the fakecam
    scene; and that box's centre and width in the frame (server's BlazeFace on the frame
    itself, at tile resolution, so the reference does not depend on the page)."""
    from streamfer.detect import load_detector

    det = load_detector()
    box = max(det.detect_photo(cv2.cvtColor(head, cv2.COLOR_RGB2GRAY)), key=lambda d: d.box.w)
    side = round(head.shape[0] * face_px / box.box.w) // 2 * 2
    frame = scene(cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA), side=side,
                  centre=(330, 240))
    found = det.detect_photo(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    assert found, "the server's detector itself misses the far face"
    b = max(found, key=lambda d: d.score).box
    return frame, (b.x + b.w / 2, b.y + b.h / 2, float(b.w))


def png64(rgb: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1]
                            .tobytes()).decode()


def run_detector(server: Server, playwright: Any, frame: np.ndarray, repeat: int = 1,
                 **options: Any) -> tuple[dict[str, Any], list[str]]:
    """createFaceDetector(options) on one frame, `repeat` times, in a page of the server's
    origin with every other host unreachable; returns its answer and the paths fetched."""
    assert INSTALLED is not None and INSTALLED.runtime is not None
    origin = server.url.rstrip("/")
    fetched: list[str] = []
    outside: list[str] = []
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                         args=["--no-sandbox", "--disable-gpu"])
    try:
        context = browser.new_context()

        def route(r: Any) -> None:
            url = r.request.url
            if url.startswith(origin + "/"):
                fetched.append(url[len(origin):])
                r.continue_()
            elif url.startswith("data:"):
                r.continue_()
            else:
                outside.append(url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "healthz")
        result = page.evaluate(DETECT, ["/" + INSTALLED.runtime.url, png64(frame), options,
                                        repeat])
        assert errors == []
    finally:
        browser.close()
    assert outside == []  # nothing but this server was asked for anything
    return result, fetched


def centred_on(face: dict[str, Any], ref: tuple[float, float, float], tol: float = 0.25) -> bool:
    b = face["box"]
    cx, cy, w = ref
    return (abs(b["x"] + b["w"] / 2 - cx) <= tol * w and abs(b["y"] + b["h"] / 2 - cy) <= tol * w
            and 0.7 * w <= b["w"] <= 1.4 * w)


def test_finds_a_real_face_in_a_worker_from_the_servers_vendor_urls(
        page_server: Server, playwright: Any, head: np.ndarray) -> None:
    frame, ref = far_scene(head, 120)
    result, fetched = run_detector(page_server, playwright, frame, repeat=3)
    assert result["inWorker"] is True and result["runtime"] == "litert-wasm"
    assert result["name"] == "blazeface-auto"
    runs = result["runs"]
    for run in runs:
        assert len(run["faces"]) == 1, run
        assert centred_on(run["faces"][0], ref), (run, ref)
        assert run["faces"][0]["score"] >= 0.5 and run["ms"] > 0
    # The first frame searched the whole frame; the next ones the tracked face's region,
    # which keeps its id.
    assert runs[0]["range"] == "full" and runs[1]["range"] == runs[2]["range"] == "track"
    assert len({r["faces"][0]["id"] for r in runs}) == 1
    # The runtime and both networks came from the versioned /vendor/ folder.
    base = "/" + INSTALLED.runtime.url
    for name in ("litert.js", "wasm-utils.js", "face_detection_short_range.tflite",
                 "face_detection_full_range.tflite"):
        assert base + name in fetched, fetched
    assert any(p.startswith(base) and p.endswith(".wasm") for p in fetched), fetched


def test_finds_a_face_too_far_for_the_short_range_network(page_server: Server, playwright: Any,
                                                          head: np.ndarray) -> None:
    frame, ref = far_scene(head, 60)
    result, _ = run_detector(page_server, playwright, frame, repeat=2)
    first, second = result["runs"]
    assert [centred_on(f, ref) for f in first["faces"]] == [True], (first, ref)
    assert [centred_on(f, ref) for f in second["faces"]] == [True], (second, ref)
    assert second["range"] == "track"  # found again in its region, by the short range
    # The short-range network alone does not find it in the whole frame.
    short, _ = run_detector(page_server, playwright, frame, range="short", track=False)
    assert not any(centred_on(f, ref) for f in short["runs"][0]["faces"]), short


def test_finds_nothing_in_a_face_free_frame(page_server: Server, playwright: Any) -> None:
    result, _ = run_detector(page_server, playwright, gradient_frames(1)[0], repeat=2)
    assert [r["faces"] for r in result["runs"]] == [[], []]
    # Both networks looked at the whole frame, then the full-range one at one tile of it.
    assert result["runs"][0]["range"] == "full+short+tile"


def test_main_thread_path_finds_the_same_face(page_server: Server, playwright: Any,
                                              head: np.ndarray) -> None:
    """Where Workers cannot take frames the engine runs on the page's thread, same answer."""
    frame, ref = far_scene(head, 120)
    result, _ = run_detector(page_server, playwright, frame, worker=False)
    assert result["inWorker"] is False
    assert [centred_on(f, ref) for f in result["runs"][0]["faces"]] == [True]


def test_page_streams_crops_of_a_far_face_detected_in_a_worker(
        page_server: Server, playwright: Any, head: np.ndarray, tmp_path: Path) -> None:
    """The page with ?detector=worker and a 60 px face drifting in the camera's frame: the
    detector runs in a Worker (the page says so), finds the face and sends its crops."""
    frame, _ = far_scene(head, 60)
    video = write_y4m(tmp_path / "far.y4m", shaking(frame))
    before = {k: page_server.frames_by_kind(k) for k in ("crop", "full")}
    with phone(playwright, video) as context:
        page = open_page(context, page_server.url + "?detector=worker")
        page.wait_for_selector('#status[data-state="streaming"]', timeout=WAIT_MS)
        page.wait_for_function("Number(document.querySelector('#stats').dataset.ok || 0) >= 5",
                               timeout=WAIT_MS)
        assert page.evaluate("() => document.documentElement.dataset.detectorThread") == "worker"
        assert page.get_attribute("body", "data-detector") == "worker"
        assert float(page.evaluate("() => document.documentElement.dataset.detectMs")) > 0
        assert page.is_hidden("#detector-note")
        sent = counts(page)["sent"]
        assert page.errors == []
    got = {k: page_server.frames_by_kind(k) - before[k] for k in ("crop", "full")}
    assert got["crop"] >= 0.9 * (got["crop"] + got["full"]) and got["crop"] >= 5, got
    assert got["crop"] + got["full"] >= sent


MATHS = """async ([spec, regress, logits]) => {
  const m = await import("/detection/blazeface.js");
  const s = m.SPECS[spec];
  const anchors = m.ssdAnchors(s);
  return { anchors: Array.from(anchors),
           faces: m.decode(s, anchors, Float32Array.from(regress), Float32Array.from(logits)) };
}"""


@pytest.mark.parametrize("variant", ["short", "full"])
def test_anchors_and_decoding_are_the_servers(page_server: Server, playwright: Any,
                                              variant: str) -> None:
    """web/detection/blazeface.js against streamfer/detect.py on the same raw outputs: the
    same anchors, and the same boxes and scores after weighted suppression."""
    from streamfer.detect import SPECS, BlazeFace, Letterbox, ssd_anchors

    spec = SPECS[variant]
    anchors = ssd_anchors(spec)
    rng = np.random.default_rng(0)
    regress = rng.normal(0, 3, (len(anchors), 16)).astype(np.float32)
    regress[:, 2:4] = rng.uniform(10, 40, (len(anchors), 2))
    logits = rng.normal(-6, 3, len(anchors)).astype(np.float32)
    hot = rng.choice(len(anchors), 12, replace=False)  # a few clusters of confident boxes
    logits[hot] = rng.uniform(0, 4, 12)
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                         args=["--no-sandbox", "--disable-gpu"])
    try:
        page = browser.new_page()
        page.goto(page_server.url + "healthz")
        got = page.evaluate(MATHS, [variant, regress.ravel().tolist(), logits.tolist()])
    finally:
        browser.close()
    np.testing.assert_allclose(np.array(got["anchors"]).reshape(-1, 2), anchors, atol=1e-6)
    det = BlazeFace.__new__(BlazeFace)  # decode's inputs only: no network needed
    det.spec, det.size, det.min_score, det.anchors = spec, spec.size, spec.min_score, anchors
    want = det.decode(regress, 1 / (1 + np.exp(-logits)), Letterbox(1.0, 0, 0, 0, 0))
    assert len(got["faces"]) == len(want) > 1
    for g, w in zip(got["faces"], want, strict=True):
        x0, y0, x1, y1 = g["box"]
        assert g["score"] == pytest.approx(w.score, abs=1e-5)
        # (the server rounds its boxes to pixels)
        assert [x0, y0, x1 - x0, y1 - y0] == pytest.approx(
            [w.box.x, w.box.y, w.box.w, w.box.h], abs=1.0)


def test_several_faces_get_stable_ids(page_server: Server, playwright: Any,
                                      head: np.ndarray) -> None:
    """Two people in view: with maxFaces 2 both are found, each keeps its id from frame to
    frame (tracked in its own square); with maxFaces 1 only the larger."""
    frame = scene(head, side=260, centre=(170, 250), others=((head, 170, (500, 250)),))
    result, _ = run_detector(page_server, playwright, frame, repeat=3, maxFaces=2)
    runs = result["runs"]
    assert [len(r["faces"]) for r in runs] == [2, 2, 2], runs
    ids = [[f["id"] for f in r["faces"]] for r in runs]
    assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == 2, ids
    assert runs[2]["range"] == "track"
    assert runs[0]["faces"][0]["box"]["x"] < 320  # largest first: the nearer, left one
    one, _ = run_detector(page_server, playwright, frame, repeat=1, maxFaces=1)
    (face,) = one["runs"][0]["faces"]
    assert face["box"]["x"] < 320
