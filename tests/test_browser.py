"""The phone page in a real headless Chromium against the real server.

pytest starts `python -m streamfer.serve` on a free 127.0.0.1 port, and Chromium opens the page
in a phone-sized viewport with a fake camera that plays a video built from
`skimage.data.astronaut()` (a real face), a drifting gray gradient (no face) or near-black
noise (too dark). The page's state is read from the DOM (`data-*` attributes) and the
server's own count of answers from `/metrics`.

Needs Chromium at /usr/bin/chromium (Debian: `apt-get install chromium`; another binary via
STREAMFER_CHROMIUM) and the `playwright` Python package (its own browser downloads are not
used); skips without them, or fails when STREAMFER_REQUIRE_BROWSER=1 (CI).
Screenshots land in artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from browserkit import (
    CHROMIUM,
    INSECURE_HOST,
    ROOT,
    Server,
    counts,
    free_port,
    open_page,
    phone,
    prediction,
)
from fakecam import dark_frames, face_frames, gradient_frames, write_y4m

from streamfer.faces import FaceDetector

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "artifacts"
WAIT_MS = 20_000  # for the page to reach a state; generous: 2 slow cores, training running


def _missing(reason: str) -> None:
    """Skip without a browser, except where one is required (CI sets STREAMFER_REQUIRE_BROWSER=1
    so that a broken install fails instead of quietly skipping the page's only test)."""
    if os.environ.get("STREAMFER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"STREAMFER_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if not CHROMIUM.exists():
    _missing(f"Chromium not found at {CHROMIUM}: `apt-get install chromium` "
             "(or set STREAMFER_CHROMIUM)")
try:
    from playwright import sync_api
except ImportError:
    _missing("the playwright package is not installed: `pip install -e '.[test]'`")


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on a free loopback port, with the tiny (untrained, fast) model: the
    page's behaviour, not the model's accuracy, is under test here."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = Server(tiny_model_path, free_port(), log)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def classes(tiny_model_path: Path) -> list[str]:
    return json.loads(tiny_model_path.with_suffix(".json").read_text())["classes"]


# ---- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def videos(astronaut_rgb: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fakecam")
    return {
        "face": write_y4m(folder / "astronaut.y4m", face_frames(astronaut_rgb)),
        "gradient": write_y4m(folder / "gradient.y4m", gradient_frames()),
        "dark": write_y4m(folder / "dark.y4m", dark_frames()),
    }


def wait_state(page: Any, state: str) -> None:
    page.wait_for_selector(f'#status[data-state="{state}"]', timeout=WAIT_MS)


def wait_count(page: Any, key: str, at_least: int) -> None:
    page.wait_for_function(
        f"Number(document.querySelector('#stats').dataset.{key} || 0) >= {at_least}",
        timeout=WAIT_MS,
    )


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


# ---- tests -----------------------------------------------------------------------------------


def test_face_video_streams_predictions(server: Server, playwright: Any,
                                        videos: dict[str, Path], classes: list[str]) -> None:
    ok_before = server.replies("ok")
    with phone(playwright, videos["face"]) as context:
        page = open_page(context, server.url)
        wait_state(page, "streaming")
        wait_count(page, "ok", 5)

        shown = prediction(page)  # one read: a reply may land between two
        probs = shown["bars"]
        assert list(probs) == classes  # one bar per class, in the greeting's order
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)  # smoothed: still sums to 1
        assert all(0.0 <= p <= 1.0 for p in probs.values())
        assert shown["top"] == max(probs, key=probs.get)
        assert shown["word"].strip().lower() == shown["top"]

        rtt = page.inner_text("#rtt")
        assert re.fullmatch(r"\d+ ms", rtt), rtt
        assert float(page.get_attribute("#rtt", "data-ms")) > 0
        assert float(page.get_attribute("#fps", "data-fps")) > 0
        assert page.get_attribute("#conn", "data-state") == "open"

        # Smoothing off: the bars show the latest raw reply, which also sums to 1.
        page.click("label.toggle")
        assert not page.is_checked("#smooth")
        seen = counts(page)["ok"]
        wait_count(page, "ok", seen + 2)
        raw = prediction(page)
        assert sum(raw["bars"].values()) == pytest.approx(1.0, abs=1e-3)
        assert raw["top"] == max(raw["bars"], key=raw["bars"].get)

        # The face box from the server is drawn over the preview.
        assert page.evaluate(
            "() => { const c = document.getElementById('overlay');"
            " const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " for (let i = 3; i < px.length; i += 4) if (px[i]) return true; return false; }"
        )
        screenshot(page, "browser-phone-astronaut.png")
        page_counts = counts(page)
        detector = page.get_attribute("body", "data-detector")
        assert page.errors == []

    assert page_counts["sent"] >= page_counts["ok"] >= 7
    assert page_counts["errors"] == 0
    # Every "ok" the page counted was counted by the server too.
    assert server.replies("ok") - ok_before >= page_counts["ok"]
    assert detector in ("server", "shape")


CROP_AND_SEND = """async (box) => {
  const { FrameGrabber } = await import("./capture.js");
  const { packFrame, socketUrl } = await import("./protocol.js");
  const crop = await new FrameGrabber().faceCrop(document.getElementById("camera"), box);
  const ws = new WebSocket(socketUrl());
  ws.binaryType = "arraybuffer";
  const reply = await new Promise((resolve, reject) => {
    ws.onerror = () => reject(new Error("socket error"));
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "hello") ws.send(packFrame(7, true, crop.bytes));
      else resolve(msg);
    };
  });
  ws.close();
  return { bytes: crop.bytes.byteLength, reply };
}"""


def test_page_crops_are_answered_as_crops(server: Server, playwright: Any, videos: dict[str, Path],
                                          astronaut_rgb: Any, classes: list[str]) -> None:
    """The crop path an in-page detector uses (Chromium on Linux has no FaceDetector, so it is
    driven here with the server's own detector's box): the page's 96x96 gray JPEG crop, sent
    with the crop flag, is answered for the whole crop without detection."""
    frame = face_frames(astronaut_rgb, count=1)[0]
    found = FaceDetector().detect(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    assert found is not None
    box = {"x": found.x, "y": found.y, "w": found.w, "h": found.h}
    with phone(playwright, videos["face"]) as context:
        page = open_page(context, server.url)
        wait_state(page, "streaming")
        sent = page.evaluate(CROP_AND_SEND, box)
        assert page.errors == []
    reply = sent["reply"]
    assert reply["status"] == "ok", reply
    assert reply["id"] == 7
    assert reply["box"] == [0, 0, 96, 96]  # the whole crop: the server did not detect
    assert list(reply["probs"]) == classes
    assert 500 < sent["bytes"] < 8192  # "a few KB"


def test_faceless_video_shows_no_face(server: Server, playwright: Any,
                                      videos: dict[str, Path]) -> None:
    before = {status: server.replies(status) for status in ("ok", "no_face")}
    received_before = server.frames_received()
    with phone(playwright, videos["gradient"]) as context:
        page = open_page(context, server.url)
        wait_state(page, "no-face")
        detector = page.get_attribute("body", "data-detector")
        if detector == "server":
            wait_count(page, "noFace", 3)  # full frames sent, answered "no face" by the server
        else:
            wait_count(page, "skippedNoFace", 3)  # the page's own detector saw none
        assert page.get_attribute("#status", "data-state") == "no-face"
        assert "stale" in page.get_attribute("#bars", "class")
        screenshot(page, "browser-phone-noface.png")
        page_counts = counts(page)
        assert page.errors == []

    assert page_counts["ok"] == 0
    assert server.replies("ok") == before["ok"]
    if detector == "server":
        assert page_counts["sent"] >= page_counts["noFace"] >= 3
        assert server.replies("no_face") - before["no_face"] >= page_counts["noFace"]
    else:
        assert page_counts["sent"] == 0
        assert server.frames_received() == received_before


def test_dark_video_sends_nothing(server: Server, playwright: Any,
                                  videos: dict[str, Path]) -> None:
    received_before = server.frames_received()
    with phone(playwright, videos["dark"]) as context:
        page = open_page(context, server.url)
        wait_state(page, "too-dark")
        wait_count(page, "skippedDark", 5)
        page_counts = counts(page)
        assert page.errors == []
    assert page_counts["sent"] == 0
    assert server.frames_received() == received_before


def test_insecure_origin_explains_https(server: Server, playwright: Any,
                                        videos: dict[str, Path]) -> None:
    with phone(playwright, videos["dark"]) as context:
        page = open_page(context, f"http://{INSECURE_HOST}:{server.port}/")
        assert page.evaluate("() => window.isSecureContext") is False
        wait_state(page, "camera-error")
        assert page.get_attribute("#help", "data-kind") == "insecure"
        help_text = page.inner_text("#help")
        assert "HTTPS" in help_text
        assert "--https" in help_text
        screenshot(page, "browser-phone-insecure.png")
        assert page.errors == []


def test_denied_camera_is_explained(server: Server, playwright: Any,
                                    videos: dict[str, Path]) -> None:
    with phone(playwright, videos["dark"], allow_camera=False) as context:
        page = open_page(context, server.url)
        wait_state(page, "camera-error")
        assert page.get_attribute("#help", "data-kind") == "denied"
        assert "permission" in page.inner_text("#help").lower()
        assert page.is_visible("#retry")
        screenshot(page, "browser-phone-denied.png")
        assert counts(page)["sent"] == 0
        assert page.errors == []


def test_reconnects_when_the_server_comes_back(server: Server, playwright: Any,
                                               videos: dict[str, Path]) -> None:
    """Runs last: it restarts the module's server (same port) under an open page."""
    with phone(playwright, videos["face"]) as context:
        page = open_page(context, server.url)
        wait_state(page, "streaming")
        server.stop()
        wait_state(page, "reconnecting")
        screenshot(page, "browser-phone-reconnecting.png")
        assert page.get_attribute("#conn", "data-state") == "reconnecting"
        # One read: the text alternates between "retrying in N s" and "reconnecting…" as the
        # backoff timer runs, so two reads can see one of each.
        status = page.inner_text("#status").lower()
        assert "connection lost" in status
        assert "retrying in" in status or "reconnecting" in status
        server.start()
        page.wait_for_selector('#conn[data-state="open"]', timeout=WAIT_MS)
        seen = counts(page)["ok"]
        wait_count(page, "ok", seen + 3)
        wait_state(page, "streaming")
        assert page.errors == []
