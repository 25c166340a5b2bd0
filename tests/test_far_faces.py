"""A face far from the camera, as the page sends it without an in-page detector: a whole
640x480 gray frame (web/capture.js FULL_WIDTH) over /ws, the face about 80 px across (an
eighth of the frame). At the whole frame's scale such a face is ~16 px in BlazeFace's 128 px
input, too small; the server searches the frame's tiles next and must find it. Real photos
(the astronaut; webfaces-dev photos, skipped without the data), shrunk and pasted into a
frame, through the real server (aiohttp on 127.0.0.1, BlazeFace from web/node_modules)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfer.detect import SPECS, WEIGHTS_DIR, BlazeFace
from streamfer.model import Predictor
from streamfer.protocol import pack_frame
from tests.kit.inproc import Client, MakeClient
from tests.test_server import assert_ok, connect, recv

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / SPECS["short"].file).is_file(),
    reason=f"BlazeFace weights not installed at {WEIGHTS_DIR} (`npm ci` in web/)")

FRAME = (480, 640)  # a phone camera's 640x480, sent whole
FACE_PX = 80
MAX_FRAME_BYTES = 256 * 1024  # the server's default --max-frame-bytes
WEBFACES = 12  # photos taken evenly across webfaces-dev


@pytest.fixture(scope="module")
def blaze() -> BlazeFace:
    return BlazeFace()


def far_frame(blaze: BlazeFace, rgb: np.ndarray, centre: tuple[float, float]) -> bytes | None:
    """`rgb`'s face shrunk to FACE_PX wide, pasted with its surroundings into a gray 640x480
    frame with its centre at `centre` (fractions of the frame), as a JPEG the page would
    send; None if the photo's own face is not found at full size."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    found = blaze.detect_photo(gray)
    if not found:
        return None
    box = max(found, key=lambda d: d.box.w).box
    s = FACE_PX / box.w
    small = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    frame = np.full(FRAME, 110, np.uint8)
    x0 = round(centre[0] * FRAME[1] - (box.x + box.w / 2) * s)
    y0 = round(centre[1] * FRAME[0] - (box.y + box.h / 2) * s)
    h, w = small.shape
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(FRAME[1], x0 + w), min(FRAME[0], y0 + h)
    frame[ys:ye, xs:xe] = small[ys - y0:ye - y0, xs - x0:xe - x0]
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return buf.tobytes()


async def answers(client: Client, frames: list[bytes], classes: list[str]) -> None:
    """Send `frames` one at a time at the rate the greeting suggests, as the page does (a
    faster client is answered dropped/rate_limited), each answered with one face near
    FACE_PX wide."""
    ws, hello = await connect(client)
    period = 1.0 / hello["limits"]["suggested_fps"]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(frames):
        assert len(frame) <= MAX_FRAME_BYTES
        await asyncio.sleep(max(0.0, start + i * period - loop.time()))
        await ws.send_bytes(pack_frame(i, frame))  # flags 0: a full frame, the server detects
        reply = await recv(ws)
        assert reply["id"] == i
        assert_ok(reply, classes)
        assert 0.6 * FACE_PX <= reply["box"][2] <= 1.6 * FACE_PX, reply["box"]
    await ws.close()


async def test_a_far_face_in_a_full_frame_is_found(make_client: MakeClient, blaze: BlazeFace,
                                                   astronaut_rgb: np.ndarray,
                                                   predictor: Predictor) -> None:
    frames = [far_frame(blaze, astronaut_rgb, c) for c in
              [(0.5, 0.5), (0.2, 0.25), (0.8, 0.7), (0.5, 0.35)]]
    assert all(frames)
    await answers(await make_client(), frames, predictor.classes)  # type: ignore[arg-type]


async def test_far_webfaces_in_full_frames_are_found(make_client: MakeClient, blaze: BlazeFace,
                                                     datasets: Path,
                                                     predictor: Predictor) -> None:
    photos = sorted((datasets / "webfaces-dev").glob("*/*.jpg"))
    assert photos
    picked = photos[:: max(1, len(photos) // WEBFACES)][:WEBFACES]
    rng = np.random.default_rng(0)
    frames = []
    for path in picked:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        frame = far_frame(blaze, rgb, (rng.uniform(0.15, 0.85), rng.uniform(0.2, 0.8)))
        if frame is not None:
            frames.append(frame)
    assert len(frames) >= WEBFACES - 2
    await answers(await make_client(), frames, predictor.classes)
