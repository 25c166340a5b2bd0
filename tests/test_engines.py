"""The demo page and the embedding example in Chromium, Firefox ESR and WebKitGTK against the
real server, each with a face photo as its camera (tests/kit/fakecam.py FAKECAM_JS, a canvas
stream substituted for getUserMedia; bench/engines.py drives the engines).

In every engine and on both pages: the page loads, the in-page detector runs in a Worker (as
the page reports in `document.documentElement.dataset.detectorThread`), a camera without a
face sends nothing, a face gets an expression with at least 90% of what is sent being crops,
a restarted server is reconnected to, and a denied camera is explained.

An engine missing here skips with what to install, or fails where STREAMFER_REQUIRE_BROWSER=1
(CI installs all three).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.engines import ENGINES, Engine, launch, missing, xvfb
from streamfer.server import vendor
from tests.kit.browserkit import ROOT, Server, skip_or_fail
from tests.kit.fakecam import fakecam_script, jpeg

pytestmark = pytest.mark.browser

WAIT_S = 40.0  # for a page to reach a state: 2 slow shared cores, three engines
CROP_SHARE = 0.9  # of the frames a page with a face in view sends, at least this many are crops
# Both pages, as they are (no ?detector=), must pick the Worker-based detector (web/detection/:
# BlazeFace on LiteRT.js) and report that it runs in a Worker.
DETECTOR_THREAD = "worker"
PAGES = {"demo": "", "example": "examples/embed.html"}

if vendor.find(ROOT / "web") is None:
    skip_or_fail("web/node_modules has no in-page detector: `(cd web && npm ci)`")

# What each page shows, read in one expression: the demo page's #status/#stats/#help, the
# example's #status/#expression.
READ = """({
  state: document.querySelector("#status") && document.querySelector("#status").dataset.state,
  conn: document.querySelector("#conn") && document.querySelector("#conn").dataset.state,
  counts: document.querySelector("#stats") && Object.fromEntries(
    Object.entries(document.querySelector("#stats").dataset).map(([k, v]) => [k, Number(v)])),
  top: { ...(document.querySelector("#top") || document.querySelector("#expression")).dataset },
  help: document.querySelector("#help") && document.querySelector("#help").dataset.kind,
  text: document.querySelector("#status") && document.querySelector("#status").textContent,
  error: document.querySelector("#status") && document.querySelector("#status").dataset.error,
  thread: document.documentElement.dataset.detectorThread || null,
  errors: window.__pageErrors,
})"""


@pytest.fixture(scope="module")
def classes(tiny_model_path: Path) -> list[str]:
    return json.loads(tiny_model_path.with_suffix(".json").read_text())["classes"]


@pytest.fixture(scope="module")
def camera(astronaut_scene: np.ndarray) -> bytes:
    """The astronaut at arm's length in a room, as the fake camera's JPEG."""
    return jpeg(astronaut_scene)


@pytest.fixture(scope="module")
def displays() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest, displays: ExitStack) -> Iterator[Engine]:
    """One browser per engine for the module (one Xvfb display shared by those needing it)."""
    why = missing(request.param)
    if why:
        skip_or_fail(f"{request.param} {why}")
    shown: list[str] = []

    def display() -> str:
        if not shown:
            shown.append(displays.enter_context(xvfb()))
        return shown[0]

    browser = launch(request.param, display)
    yield browser
    browser.close()


def read(engine: Engine) -> dict[str, Any]:
    return engine.evaluate(READ)


def wait(engine: Engine, condition: str) -> None:
    engine.wait(condition, WAIT_S, READ)


def settled(server: Server) -> float:
    """The server's count of frames received, once frames a closed page sent just before it
    closed have arrived (the count holds still for half a second)."""
    count = server.frames_received()
    for _ in range(20):
        time.sleep(0.5)
        now = server.frames_received()
        if now == count:
            return now
        count = now
    raise AssertionError("frames keep arriving with no page open")


def wait_crops(server: Server, before: float, count: int) -> None:
    """Until the server has read `count` crops more than `before`."""
    end = time.monotonic() + WAIT_S
    while server.frames_by_kind("crop") - before < count:
        assert time.monotonic() < end, f"fewer than {count} crops in {WAIT_S:g} s"
        time.sleep(0.25)


def state_is(state: str) -> str:
    return f'document.querySelector("#status").dataset.state === "{state}"'


@pytest.mark.parametrize("page", list(PAGES))
def test_photo_camera(engine: Engine, page: str, page_server: Server, camera: bytes,
                      classes: list[str]) -> None:
    """No face in view: nothing is sent. The photo: expressions from crops. The server
    restarts: the page reconnects and streams again."""
    engine.leave()  # the previous test's page
    received = settled(page_server)
    engine.open(page_server.url + PAGES[page], fakecam_script(camera, mode="blank"))
    wait(engine, f"{state_is('no-face')} && document.documentElement.dataset.detectorThread")
    if page == "demo":
        wait(engine, 'Number(document.querySelector("#stats").dataset.skippedNoFace) >= 3')
        assert read(engine)["counts"]["sent"] == 0
    else:
        engine.evaluate("new Promise((done) => setTimeout(done, 1500))")  # a few idle checks
        assert read(engine)["state"] == "no-face"
    assert page_server.frames_received() == received, read(engine)  # nothing reached the server

    before = {k: page_server.frames_by_kind(k) for k in ("crop", "full")}
    engine.evaluate('window.__fakecam.mode = "face"')
    wait(engine, state_is("streaming"))
    if page == "demo":
        wait(engine, 'Number(document.querySelector("#stats").dataset.ok) >= 5')
    else:
        wait(engine, f'{json.dumps(classes)}.includes('
                     'document.querySelector("#expression").dataset.class)')
    wait_crops(page_server, before["crop"], 5)
    seen = read(engine)
    assert seen["top"]["class"] in classes, seen  # an expression is shown
    assert seen["thread"] == DETECTOR_THREAD, seen
    assert seen["errors"] == [], seen
    crops = page_server.frames_by_kind("crop") - before["crop"]
    full = page_server.frames_by_kind("full") - before["full"]
    assert crops >= CROP_SHARE * (crops + full), (crops, full)
    if page == "demo":
        assert crops + full >= seen["counts"]["sent"] >= seen["counts"]["ok"] >= 5

    page_server.stop()
    wait(engine, state_is("reconnecting"))
    assert "connection lost" in read(engine)["text"].lower()
    page_server.start()
    wait(engine, state_is("streaming"))  # a reply from the new server process
    if page == "demo":
        assert read(engine)["conn"] == "open"
    assert read(engine)["errors"] == []


@pytest.mark.parametrize("page", list(PAGES))
def test_denied_camera_is_explained(engine: Engine, page: str, page_server: Server,
                                    camera: bytes) -> None:
    engine.leave()
    received = settled(page_server)
    engine.open(page_server.url + PAGES[page], fakecam_script(camera, mode="deny"))
    wait(engine, state_is("camera-error"))
    seen = read(engine)
    if page == "demo":
        assert seen["help"] == "denied", seen
        help_text = engine.evaluate('document.querySelector("#help").textContent')
        assert "permission" in help_text.lower()
        assert engine.evaluate('!document.querySelector("#retry").hidden')
    else:
        assert seen["error"] == "camera", seen
        assert "permission" in seen["text"].lower(), seen
    assert seen["errors"] == [], seen
    assert page_server.frames_received() == received
