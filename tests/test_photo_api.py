"""Server-side face detection through the real server (aiohttp on 127.0.0.1, real model,
real JPEGs): phone photos on /api/predict, every face, tracking, tight crops, the batched
detection stage. Needs BlazeFace's weights (`npm ci` in web/); skips without them."""

from __future__ import annotations

import struct

import aiohttp
import cv2
import numpy as np
import pytest
from PIL import Image

from streamfer.detect import SPECS, WEIGHTS_DIR
from streamfer.protocol import pack_frame
from tests.kit.fakecam import jpeg
from tests.kit.inproc import MakeClient, bound
from tests.test_server import assert_ok, connect, recv

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / SPECS["short"].file).is_file(),
    reason=f"BlazeFace weights not installed at {WEIGHTS_DIR} (`npm ci` in web/)")

CLASSES = ["anger", "happiness", "sadness", "surprise", "neutral"]
NOSE = (224, 114)  # the astronaut's nose in her 512 x 512 picture


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an EXIF APP1 segment carrying `orientation` right after the JPEG's SOI."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def phone_photo(astronaut_rgb: np.ndarray, orientation: int) -> tuple[bytes, float]:
    """A 4000x3000 (upright) phone-style JPEG of the astronaut, 4-5 MB (sensor-like noise,
    quality 95), stored turned as `orientation` says; and the upright scale to 512 px."""
    upright = cv2.resize(cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR), (4000, 4000))[:3000]
    noise = np.random.default_rng(0).integers(-8, 9, (3000, 4000, 1), dtype=np.int16)
    upright = np.clip(upright + noise, 0, 255).astype(np.uint8)
    stored = {1: upright, 6: np.rot90(upright, 1), 8: np.rot90(upright, -1),
              3: np.rot90(upright, 2)}[orientation]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(stored), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return with_exif_orientation(buf.tobytes(), orientation), 4000 / 512


def on_the_nose(box: list[int], scale: float = 1.0) -> bool:
    x, y, w, h = box
    return x <= NOSE[0] * scale <= x + w and y <= NOSE[1] * scale <= y + h


@pytest.mark.slow
@pytest.mark.parametrize("orientation", [1, 6, 8, 3])
async def test_a_phone_photo_gets_probabilities_and_an_upright_box(
        make_client: MakeClient, astronaut_rgb: np.ndarray, orientation: int) -> None:
    photo, scale = phone_photo(astronaut_rgb, orientation)
    assert 4_000_000 <= len(photo) <= 5_500_000
    client = await make_client()
    form = aiohttp.FormData()
    form.add_field("image", photo, filename="IMG_0001.jpg", content_type="image/jpeg")
    resp = await bound(client.post("/api/predict", data=form))
    assert resp.status == 200
    reply = await resp.json()
    assert_ok(reply, CLASSES)
    assert on_the_nose(reply["box"], scale), reply["box"]  # in the upright photo's pixels
    assert 0.1 * 4000 <= reply["box"][2] <= 0.3 * 4000
    assert len(reply["faces"]) == 1 and reply["faces"][0]["box"] == reply["box"]
    assert reply["faces"][0]["probs"] == reply["probs"] and reply["faces"][0]["score"] > 0.5


async def test_every_face_in_a_photo_largest_first(make_client: MakeClient,
                                                   astronaut_rgb: np.ndarray) -> None:
    """Two people, each face about a tenth of the photo's width (too small for the
    detector's 128 px view of the whole photo: found by its tiled search)."""
    bgr = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR)
    canvas = np.full((560, 1000, 3), 90, np.uint8)
    canvas[24:536, 0:512] = bgr
    canvas[100:500, 560:960] = cv2.resize(bgr, (400, 400))
    ok, buf = cv2.imencode(".jpg", canvas)
    assert ok
    client = await make_client()
    resp = await bound(client.post("/api/predict", data=buf.tobytes()))
    reply = await resp.json()
    assert resp.status == 200 and reply["status"] == "ok", reply
    boxes = [f["box"] for f in reply["faces"]]
    assert len(boxes) == 2, boxes
    assert boxes[0][2] > boxes[1][2] and boxes[0] == reply["box"]
    assert boxes[0][0] < 512 <= boxes[1][0]
    for face in reply["faces"]:
        assert set(face["probs"]) == set(CLASSES) and face["top"] in CLASSES


async def test_an_upload_over_the_limit_is_413_naming_the_flag(make_client: MakeClient) -> None:
    client = await make_client(max_upload_bytes=100_000)
    form = aiohttp.FormData()
    form.add_field("image", b"\xff" * 150_000, filename="big.jpg", content_type="image/jpeg")
    for data in (b"\xff" * 150_000, form):
        resp = await bound(client.post("/api/predict", data=data))
        reply = await resp.json()
        assert resp.status == 413 and reply["code"] == "too_large"
        assert "--max-upload-bytes" in reply["error"] and "100000" in reply["error"]


async def test_a_tight_face_crop_sent_as_a_full_frame_still_gets_a_face(
        make_client: MakeClient, astronaut_rgb: np.ndarray) -> None:
    gray = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)
    tight = gray[70:170, 175:275]  # forehead to chin, no margin
    ok, buf = cv2.imencode(".jpg", cv2.resize(tight, (150, 150)))
    assert ok
    client = await make_client()
    resp = await bound(client.post("/api/predict", data=buf.tobytes()))
    reply = await resp.json()
    assert resp.status == 200 and reply["status"] == "ok", reply
    assert reply["box"][2] >= 75  # most of the image


@pytest.mark.parametrize("batched", [False, True])
async def test_frames_are_tracked_and_batching_gives_the_same_boxes(
        make_client: MakeClient, astronaut_rgb: np.ndarray, batched: bool) -> None:
    """The first frame searches the whole frame (`detect`), the next ones the region around
    the last face (`track`); with --detect-batch (the GPU path, run here on the CPU) the
    boxes are the same."""
    ok, buf = cv2.imencode(".jpg", cv2.resize(cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR),
                                              (320, 320)))
    assert ok
    blank = cv2.imencode(".jpg", np.full((240, 320), 128, np.uint8))[1].tobytes()
    client = await make_client(detect_batch=batched)
    health = await (await client.get("/healthz")).json()
    assert "BlazeFace" in health["face_detector"]
    ws, _ = await connect(client)
    replies = []
    for i, data in enumerate([buf.tobytes()] * 3 + [blank, buf.tobytes()]):
        await ws.send_bytes(pack_frame(i, data))
        replies.append(await recv(ws))
    for r in replies[:3] + replies[4:]:
        assert_ok(r, CLASSES)
        assert on_the_nose(r["box"], 320 / 512), r["box"]
    assert "detect" in replies[0]["timings_ms"] and "track" not in replies[0]["timings_ms"]
    assert "track" in replies[1]["timings_ms"] and "detect" not in replies[1]["timings_ms"]
    assert replies[3]["status"] == "no_face"  # the face left: the next frame starts afresh
    assert "detect" in replies[4]["timings_ms"] and "track" not in replies[4]["timings_ms"]
    first = replies[0]["box"]
    assert all(abs(a - b) <= 4 for a, b in zip(replies[1]["box"], first, strict=True))
    await ws.close()


async def test_full_frames_need_no_haar_cascade(make_client: MakeClient, astronaut_rgb: np.ndarray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV 5 wheels have no CascadeClassifier: BlazeFace does not need it."""
    monkeypatch.delattr(cv2, "CascadeClassifier")
    body = jpeg(astronaut_rgb)
    client = await make_client()
    health = await (await client.get("/healthz")).json()
    assert health["face_detection"] is True and "BlazeFace" in health["face_detector"]
    resp = await bound(client.post("/api/predict", data=body))
    reply = await resp.json()
    assert resp.status == 200 and reply["status"] == "ok", reply
    assert on_the_nose(reply["box"])
