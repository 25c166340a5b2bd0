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

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from streamfer.detect import FaceDetector
from streamfer.server import vendor
from tests.kit.browserkit import (
    INSECURE_HOST,
    ROOT,
    Server,
    counts,
    need_chromium,
    open_page,
    phone,
    prediction,
)
from tests.kit.fakecam import dark_frames, face_frames, gradient_frames, scene, shaking, write_y4m

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "artifacts"
WAIT_MS = 20_000  # for the page to reach a state; generous: 2 slow cores, training running


need_chromium()

# The in-page detector (BlazeFace from web/node_modules, `cd web && npm ci`). Without it the
# page falls back to server detection, and the tests check that path instead; CI installs it
# (README's commands), so there its absence is an error.
PAGE_DETECTOR = vendor.find(ROOT / "web")
NO_PAGE_DETECTOR = "web/node_modules has no in-page detector: `(cd web && npm ci)`"
if PAGE_DETECTOR is None and os.environ.get("STREAMFER_REQUIRE_BROWSER") == "1":
    pytest.fail(f"STREAMFER_REQUIRE_BROWSER=1 but {NO_PAGE_DETECTOR}", pytrace=False)
CROP_SHARE = 0.9  # of the frames a page with a face in view sends, at least this many are crops


@pytest.fixture(scope="module")
def classes(tiny_model_path: Path) -> list[str]:
    return json.loads(tiny_model_path.with_suffix(".json").read_text())["classes"]


# ---- the browser (`page_server` and `playwright`: tests/conftest.py) -------------------------


@pytest.fixture(scope="module")
def videos(astronaut_rgb: Any, astronaut_scene: Any,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fakecam")
    return {
        "face": write_y4m(folder / "astronaut.y4m", face_frames(astronaut_rgb)),
        "scene": write_y4m(folder / "astronaut-scene.y4m", shaking(astronaut_scene)),
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


def test_face_video_streams_predictions(page_server: Server, playwright: Any,
                                        videos: dict[str, Path], classes: list[str]) -> None:
    ok_before = page_server.replies("ok")
    kinds_before = {k: page_server.frames_by_kind(k) for k in ("crop", "full")}
    with phone(playwright, videos["face"]) as context:
        page = open_page(context, page_server.url)
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
    assert page_server.replies("ok") - ok_before >= page_counts["ok"]
    crops = page_server.frames_by_kind("crop") - kinds_before["crop"]
    full = page_server.frames_by_kind("full") - kinds_before["full"]
    # (>=: frames sent after the page's counts were read still reach the server)
    assert crops + full >= page_counts["sent"]
    if PAGE_DETECTOR is not None:
        assert detector == "worker"
        assert crops >= CROP_SHARE * (crops + full), (crops, full)
    else:
        assert detector == "server"  # Chromium on Linux has no FaceDetector
        assert crops == 0


def stream_scene(server: Server, playwright: Any, video: Path, name: str) -> dict[str, Any]:
    """Open the page on a fake camera playing `video` until 8 replies are shown; returns
    what the page counted and showed, and what the server read, by kind."""
    before = {k: server.frames_by_kind(k) for k in ("crop", "full")}
    with phone(playwright, video) as context:
        console: list[str] = []
        context.on("console", lambda msg: console.append(msg.text))
        page = open_page(context, server.url)
        wait_state(page, "streaming")
        wait_count(page, "ok", 8)
        shown = prediction(page)
        screenshot(page, name)
        page_counts = counts(page)
        detector = page.get_attribute("body", "data-detector")
        note_hidden = page.is_hidden("#detector-note")
        errors = page.errors
    return {"counts": page_counts, "shown": shown, "detector": detector, "errors": errors,
            "note_hidden": note_hidden, "console": console,
            **{k: server.frames_by_kind(k) - before[k] for k in ("crop", "full")}}


def check_crops_and_expression(seen: dict[str, Any], classes: list[str]) -> None:
    assert seen["errors"] == []
    assert seen["note_hidden"]  # nothing fell back
    received = seen["crop"] + seen["full"]  # what the server read from this page, by kind
    assert received >= seen["counts"]["sent"] >= 8  # (later frames still reach the server)
    assert seen["detector"] == "worker"
    # Its network runs in the wasm runtime on the CPU (the greeting's inference: "cpu"), not
    # as WebGL draws: the runtime says so when it starts.
    assert any("XNNPACK delegate for CPU" in m for m in seen["console"]), seen["console"]
    assert seen["crop"] >= CROP_SHARE * received, seen
    shown = seen["shown"]
    assert shown["top"] in classes  # an expression is shown ...
    assert shown["word"].strip().lower() == shown["top"]  # ... in words
    assert sum(shown["bars"].values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.skipif(PAGE_DETECTOR is None, reason=NO_PAGE_DETECTOR)
def test_page_detector_sends_crops_of_a_face_in_a_scene(page_server: Server, playwright: Any,
                                                        videos: dict[str, Path],
                                                        classes: list[str]) -> None:
    """The astronaut at arm's length in a room: the page finds and crops the face itself."""
    seen = stream_scene(page_server, playwright, videos["scene"], "browser-phone-scene.png")
    check_crops_and_expression(seen, classes)


def test_page_detector_sends_crops_of_a_web_photo(page_server: Server, playwright: Any,
                                                  datasets: Path, classes: list[str],
                                                  tmp_path: Path) -> None:
    """A webfaces-dev photo (never trained or tuned on) in a camera scene."""
    if PAGE_DETECTOR is None:
        pytest.skip(NO_PAGE_DETECTOR)
    photos = sorted((datasets / "webfaces-dev").glob("*/*.jpg"))
    if not photos:
        pytest.skip("no webfaces-dev photos under ../shared/datasets")
    photo = cv2.cvtColor(cv2.imread(str(photos[len(photos) // 2])), cv2.COLOR_BGR2RGB)
    video = write_y4m(tmp_path / "webface.y4m", shaking(scene(photo)))
    seen = stream_scene(page_server, playwright, video, "browser-phone-webface.png")
    check_crops_and_expression(seen, classes)


@pytest.mark.skipif(PAGE_DETECTOR is None, reason=NO_PAGE_DETECTOR)
def test_several_faces_the_largest_is_read_and_shown(page_server: Server, playwright: Any,
                                                     astronaut_rgb: Any,
                                                     tmp_path: Path) -> None:
    """Two people in view: the page says so, boxes the one it reads (the larger, nearer one,
    on the left) and sends crops of it."""
    head = astronaut_rgb[0:340, 80:420]
    frame = scene(head, side=300, centre=(190, 250), others=((head, 200, (510, 250)),))
    video = write_y4m(tmp_path / "two.y4m", shaking(frame))
    crops_before = page_server.frames_by_kind("crop")
    with phone(playwright, video) as context:
        page = open_page(context, page_server.url)
        wait_state(page, "streaming")
        page.wait_for_function(  # one read of both: the next frame may find one face
            """() => { const d = document.getElementById('detector');
              return d.dataset.faces === '2' &&
                d.textContent.includes('2 faces: reading the boxed one'); }""",
            timeout=WAIT_MS)
        wait_count(page, "ok", 3)
        # The box drawn over the (mirrored) preview is the left face's: its centre lies in
        # the left half of the video (the overlay flips with the video).
        centre = page.evaluate(
            """() => { const c = document.getElementById('overlay');
              const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let sx = 0, n = 0;
              for (let i = 3; i < px.length; i += 4) {
                if (px[i]) { sx += ((i - 3) / 4) % c.width; n++; }
              }
              return n ? sx / n / c.width : null; }""")
        screenshot(page, "browser-phone-two-faces.png")
        assert page.errors == []
    assert centre is not None and centre < 0.5, centre
    assert page_server.frames_by_kind("crop") - crops_before >= 3


def test_two_faces_each_get_an_id_and_their_own_expressions(
        page_server: Server, playwright: Any, datasets: Path, tmp_path: Path) -> None:
    """Two webfaces-dev people side by side, `?faces=2`: the Worker detector tracks both,
    each face's crops go out under its own face id, each gets replies, and the page boxes
    both with their expressions (<body data-faces>)."""
    if PAGE_DETECTOR is None:
        pytest.skip(NO_PAGE_DETECTOR)
    from streamfer.detect import load_detector

    people = []  # the first two photos whose face the server's BlazeFace finds
    for path in sorted((datasets / "webfaces-dev").glob("*/*.jpg"))[::7]:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        if load_detector().detect_photo(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)):
            people.append(rgb)
        if len(people) == 2:
            break
    if len(people) < 2:
        pytest.skip("no two webfaces-dev photos with a face under ../shared/datasets")
    left, right = people
    frame = scene(left, side=210, centre=(170, 260), others=((right, 210, (470, 260)),))
    video = write_y4m(tmp_path / "two-people.y4m", shaking(frame))
    crops_before = page_server.frames_by_kind("crop")
    with phone(playwright, video) as context:
        page = open_page(context, page_server.url + "?faces=2")
        wait_state(page, "streaming")
        page.wait_for_function(
            "() => document.body.dataset.faces && JSON.parse(document.body.dataset.faces)"
            ".length === 2", timeout=WAIT_MS)
        page.wait_for_function(  # (one frame may find one face: waited for, not read once)
            "() => document.getElementById('detector').textContent"
            ".includes('2 faces: reading 2, each boxed')", timeout=WAIT_MS)
        faces = json.loads(page.get_attribute("body", "data-faces"))
        # Each face keeps its id: both are still there, answered, a few frames later.
        wait_count(page, "ok", counts(page)["ok"] + 6)
        later = json.loads(page.get_attribute("body", "data-faces"))
        screenshot(page, "browser-phone-two-people.png")
        detector = page.get_attribute("body", "data-detector")
        assert page.errors == []
    assert detector == "worker"
    ids = {f["id"] for f in faces}
    assert len(ids) == 2 and ids == {f["id"] for f in later}, (faces, later)
    assert all(f["top"] for f in faces + later)
    assert page_server.frames_by_kind("crop") - crops_before >= 8


@pytest.mark.skipif(PAGE_DETECTOR is None, reason=NO_PAGE_DETECTOR)
def test_detector_that_fails_to_load_falls_back_visibly(page_server: Server, playwright: Any,
                                                        videos: dict[str, Path]) -> None:
    """The detector's files cannot be fetched (a proxy that blocks them, say): the page says
    so, shows the server detector as active, and streams full frames."""
    full_before = page_server.frames_by_kind("full")
    with phone(playwright, videos["face"]) as context:
        page = context.new_page()
        page.route("**/vendor/**", lambda route: route.abort())
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_server.url)
        page.wait_for_selector("#detector-note:not([hidden])", timeout=WAIT_MS)
        # The note grows as each detector fails: read it once the last fallback is active.
        wait_state(page, "streaming")
        page.wait_for_selector('#detector[data-name="server"]', timeout=WAIT_MS)
        note = page.inner_text("#detector-note")
        # Every in-page detector is tried, each failure said: the Worker one (in a Worker,
        # then on the main thread), MediaPipe's package; then the server detects.
        assert "worker" in note and "blazeface" in note and "failed to load" in note, note
        wait_count(page, "ok", 3)
        assert page.get_attribute("body", "data-detector") == "server"
        assert page.get_attribute("#detector", "data-name") == "server"
        assert "server" in page.inner_text("#detector")
        screenshot(page, "browser-phone-fallback.png")
        sent = counts(page)["sent"]
        assert errors == []
    assert page_server.frames_by_kind("full") - full_before >= sent >= 3


def test_unavailable_detector_is_noted(page_server: Server, playwright: Any,
                                       videos: dict[str, Path]) -> None:
    """`?detector=shape` where the browser has no FaceDetector: a visible note, and the page
    uses the best detector it has instead."""
    with phone(playwright, videos["face"]) as context:
        page = open_page(context, page_server.url + "?detector=shape")
        page.wait_for_selector("#detector-note:not([hidden])", timeout=WAIT_MS)
        note = page.inner_text("#detector-note")
        assert "shape" in note and "unavailable" in note, note
        wait_state(page, "streaming")
        expected = "worker" if PAGE_DETECTOR is not None else "server"
        assert page.get_attribute("#detector", "data-name") == expected
        assert page.errors == []


CROP_AND_SEND = """async (box) => {
  const { FrameGrabber } = await import("./capture.js");
  const { packFrame, socketUrl } = await import("./protocol.js");
  const video = document.getElementById("camera");
  const ws = new WebSocket(socketUrl());
  ws.binaryType = "arraybuffer";
  let crop = null;
  const reply = await new Promise((resolve, reject) => {
    ws.onerror = () => reject(new Error("socket error"));
    ws.onmessage = async (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type !== "hello") return resolve(msg);
      crop = await new FrameGrabber().faceCrop(video, box, msg.framing.haar);
      ws.send(packFrame(7, true, crop.bytes));
    };
  });
  ws.close();
  return { bytes: crop.bytes.byteLength, reply };
}"""


def test_page_crops_are_answered_as_crops(page_server: Server, playwright: Any,
                                          videos: dict[str, Path], astronaut_rgb: Any,
                                          classes: list[str]) -> None:
    """The crop path an in-page detector uses (Chromium on Linux has no FaceDetector, so it is
    driven here with the server's own detector's box): the page's 96x96 gray JPEG crop, sent
    with the crop flag, is answered for the whole crop without detection."""
    frame = face_frames(astronaut_rgb, count=1)[0]
    found = FaceDetector().detect(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))  # haar's framing
    assert found is not None
    box = {"x": found.x, "y": found.y, "w": found.w, "h": found.h}
    with phone(playwright, videos["face"]) as context:
        page = open_page(context, page_server.url)
        wait_state(page, "streaming")
        sent = page.evaluate(CROP_AND_SEND, box)
        assert page.errors == []
    reply = sent["reply"]
    assert reply["status"] == "ok", reply
    assert reply["id"] == 7
    assert reply["box"] == [0, 0, 96, 96]  # the whole crop: the server did not detect
    assert list(reply["probs"]) == classes
    assert 500 < sent["bytes"] < 8192  # "a few KB"


def test_faceless_video_shows_no_face(page_server: Server, playwright: Any,
                                      videos: dict[str, Path]) -> None:
    before = {status: page_server.replies(status) for status in ("ok", "no_face")}
    received_before = page_server.frames_received()
    with phone(playwright, videos["gradient"]) as context:
        page = open_page(context, page_server.url)
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
    assert page_server.replies("ok") == before["ok"]
    if detector == "server":
        assert page_counts["sent"] >= page_counts["noFace"] >= 3
        assert page_server.replies("no_face") - before["no_face"] >= page_counts["noFace"]
    else:
        assert page_counts["sent"] == 0
        assert page_server.frames_received() == received_before


def test_dark_video_sends_nothing(page_server: Server, playwright: Any,
                                  videos: dict[str, Path]) -> None:
    received_before = page_server.frames_received()
    with phone(playwright, videos["dark"]) as context:
        page = open_page(context, page_server.url)
        wait_state(page, "too-dark")
        wait_count(page, "skippedDark", 5)
        page_counts = counts(page)
        assert page.errors == []
    assert page_counts["sent"] == 0
    assert page_server.frames_received() == received_before


def test_insecure_origin_explains_https(page_server: Server, playwright: Any,
                                        videos: dict[str, Path]) -> None:
    with phone(playwright, videos["dark"]) as context:
        page = open_page(context, f"http://{INSECURE_HOST}:{page_server.port}/")
        assert page.evaluate("() => window.isSecureContext") is False
        wait_state(page, "camera-error")
        assert page.get_attribute("#help", "data-kind") == "insecure"
        help_text = page.inner_text("#help")
        assert "HTTPS" in help_text
        assert "--https" in help_text
        screenshot(page, "browser-phone-insecure.png")
        assert page.errors == []


@contextlib.contextmanager
def denied_camera_page(playwright: Any, videos: dict[str, Path], page_server: Server
                       ) -> Iterator[Any]:
    """The page on a phone whose camera permission is refused, once it says so."""
    with phone(playwright, videos["dark"], allow_camera=False) as context:
        page = open_page(context, page_server.url)
        wait_state(page, "camera-error")
        yield page


def test_denied_camera_is_explained(page_server: Server, playwright: Any,
                                    videos: dict[str, Path]) -> None:
    with denied_camera_page(playwright, videos, page_server) as page:
        assert page.get_attribute("#help", "data-kind") == "denied"
        assert "permission" in page.inner_text("#help").lower()
        assert page.is_visible("#retry")
        screenshot(page, "browser-phone-denied.png")
        assert counts(page)["sent"] == 0
        assert page.errors == []


def test_reconnects_when_the_server_comes_back(page_server: Server, playwright: Any,
                                               videos: dict[str, Path]) -> None:
    """Runs last: it restarts the module's server (same port) under an open page."""
    with phone(playwright, videos["face"]) as context:
        page = open_page(context, page_server.url)
        wait_state(page, "streaming")
        page_server.stop()
        wait_state(page, "reconnecting")
        screenshot(page, "browser-phone-reconnecting.png")
        assert page.get_attribute("#conn", "data-state") == "reconnecting"
        # One read: the text alternates between "retrying in N s" and "reconnecting…" as the
        # backoff timer runs, so two reads can see one of each.
        status = page.inner_text("#status").lower()
        assert "connection lost" in status
        assert "retrying in" in status or "reconnecting" in status
        page_server.start()
        page.wait_for_selector('#conn[data-state="open"]', timeout=WAIT_MS)
        seen = counts(page)["ok"]
        wait_count(page, "ok", seen + 3)
        wait_state(page, "streaming")
        assert page.errors == []


# ---- layouts ---------------------------------------------------------------------------------

# Portrait phones (a large and a small one) and a phone on its side.
VIEWPORTS = ((390, 844), (375, 667), (844, 390))

# Every element a person reads or taps that is out of reach: cut off by a box that clips it
# (a nested scrolling box counts: nobody finds the scroll inside one card on a phone), or not
# inside the page's own scrollable area, or taller than the screen. The page must not scroll
# sideways either.
UNREACHABLE = """() => {
  const W = innerWidth, H = innerHeight, bad = [];
  const pageH = document.documentElement.scrollHeight;
  const names = ".bar > *, #status, #help, #detector-note, #retry, #top-emoji, #top-word, " +
    "#bars li, #timeline-chart, #download-csv, #stats .metric, #detector, #stats .toggle";
  const at = (r) => [r.left, r.top + scrollY, r.right, r.bottom + scrollY].map(Math.round);
  for (const el of document.querySelectorAll(names)) {
    if (!el.getClientRects().length) continue;  // not displayed in this state
    const r = el.getBoundingClientRect();
    const name = el.id || el.className || el.tagName;
    for (let a = el.parentElement; a; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.overflowX === "visible" && s.overflowY === "visible") continue;
      const b = a.getBoundingClientRect();
      if (r.left < b.left - 0.5 || r.top < b.top - 0.5 || r.right > b.right + 0.5 ||
          r.bottom > b.bottom + 0.5) {
        bad.push(`${name} at ${at(r)} clipped by ${a.id || a.className} at ${at(b)}`);
      }
    }
    if (r.left < -0.5 || r.right > W + 0.5 || r.top + scrollY < -0.5 ||
        r.bottom + scrollY > pageH + 0.5 || r.height > H) {
      bad.push(`${name} at ${at(r)} outside the page (${W} x ${pageH}, screen ${H} high)`);
    }
  }
  if (document.documentElement.scrollWidth > W) {
    bad.push(`page ${document.documentElement.scrollWidth} px wide`);
  }
  return bad;
}"""

# The emoji shown in the expression card and beside every bar that the page's fonts cannot
# draw (they come out as an empty box, the font's "missing glyph", like an unassigned code
# point does).
MISSING_GLYPHS = """() => {
  const draw = (el, ch) => {
    const c = document.createElement("canvas");
    c.width = 96; c.height = 96;
    const ctx = c.getContext("2d");
    const s = getComputedStyle(el);
    ctx.font = `${s.fontSize} ${s.fontFamily}`;
    ctx.fillStyle = "#fff";
    ctx.textBaseline = "top";
    ctx.fillText(ch, 8, 8);
    return Array.from(ctx.getImageData(0, 0, 96, 96).data).join();
  };
  return [...document.querySelectorAll("#top-emoji, #bars .e")]
    .filter((el) => el.getClientRects().length)
    .filter((el) => draw(el, el.textContent) === draw(el, "\\u0378"))
    .map((el) => `${el.id || el.closest("li").dataset.class}: ${el.textContent}`);
}"""


def check_layouts(page: Any, state: str) -> None:
    """At every viewport: nothing out of reach, every glyph drawn; screenshots to look at."""
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(300)  # a resize redraws the overlay
        assert page.evaluate(UNREACHABLE) == [], (state, width, height)
        assert page.evaluate(MISSING_GLYPHS) == [], (state, width, height)
        screenshot(page, f"layout-{state}-{width}x{height}.png")


@pytest.mark.parametrize(("video", "state"), [("face", "streaming"), ("gradient", "no-face"),
                                              ("dark", "too-dark")])
def test_layouts_keep_everything_in_reach(page_server: Server, playwright: Any,
                                          videos: dict[str, Path], video: str,
                                          state: str) -> None:
    with phone(playwright, videos[video]) as context:
        page = open_page(context, page_server.url)
        wait_state(page, state)
        check_layouts(page, state)
        assert page.errors == []


def test_layouts_with_a_denied_camera(page_server: Server, playwright: Any,
                                      videos: dict[str, Path]) -> None:
    """The longest message the page shows, with the retry button under it."""
    with denied_camera_page(playwright, videos, page_server) as page:
        page.evaluate("() => { const n = document.getElementById('detector-note');"
                      " n.hidden = false; n.textContent = 'Face detector note. '.repeat(6); }")
        check_layouts(page, "camera-error")
        assert page.errors == []
