"""Every /api/predict reply has the shape docs/PROTOCOL.md gives it, whatever its status, from
the real server (aiohttp on 127.0.0.1, the real detector, real JPEGs): clients can read
`faces` from any 200 reply, and the timing stages add up to no more than `total`."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from streamfer import protocol
from streamfer.detect import SPECS, WEIGHTS_DIR
from streamfer.model import Predictor
from tests.kit.inproc import Client, MakeClient, bound

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / SPECS["short"].file).is_file(),
    reason=f"BlazeFace weights not installed at {WEIGHTS_DIR} (`npm ci` in web/)")

# The keys of each kind of reply body on /api/predict (docs/PROTOCOL.md, "HTTP API").
KEYS = {
    "ok": {"type", "status", "box", "probs", "top", "timings_ms", "batch", "faces"},
    "no_face": {"type", "status", "timings_ms", "faces"},
    "error": {"type", "status", "code", "error"},
    "dropped": {"type", "status", "reason"},
}
FACE_KEYS = {"box", "score", "probs", "top"}


def jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


async def predict(client: Client, body: bytes) -> tuple[int, dict[str, Any]]:
    resp = await bound(client.post("/api/predict", data=body,
                                   headers={"Content-Type": "image/jpeg"}))
    return resp.status, await resp.json()


def check_shape(reply: dict[str, Any], classes: list[str]) -> None:
    status = reply["status"]
    assert set(reply) == KEYS[status], reply
    assert reply["type"] == "result"
    if status in ("ok", "no_face"):
        t = reply["timings_ms"]
        assert set(t) <= set(protocol.TIMING_KEYS) and {"decode", "total"} <= set(t), t
        stages = sum(v for k, v in t.items() if k != "total")
        assert stages <= t["total"] + 0.05, t  # each stage once, rounding to 0.01 ms each
        assert isinstance(reply["faces"], list)
    if status == "ok":
        assert reply["faces"] and set(reply["probs"]) == set(classes)
        for face in reply["faces"]:
            assert set(face) == FACE_KEYS and set(face["probs"]) == set(classes)
        assert reply["faces"][0]["box"] == reply["box"]
    if status == "no_face":
        assert reply["faces"] == []
    if status == "error":
        assert reply["code"] in protocol.ERROR_CODES and reply["error"]
    if status == "dropped":
        assert reply["reason"] in protocol.DROP_REASONS


async def test_every_status_has_its_documented_shape(make_client: MakeClient,
                                                     astronaut_rgb: np.ndarray,
                                                     predictor: Predictor) -> None:
    face = jpeg(cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR))
    blank = jpeg(np.full((480, 640, 3), 128, np.uint8))
    client = await make_client(max_upload_bytes=len(face) + 10)
    seen = {}
    for body, want_http, want in [(face, 200, "ok"), (blank, 200, "no_face"),
                                  (b"not an image at all", 400, "error"),
                                  (face + b"\0" * 100, 413, "error")]:
        status, reply = await predict(client, body)
        assert status == want_http and reply["status"] == want, reply
        check_shape(reply, predictor.classes)
        seen[(want, reply.get("code"))] = reply
    assert ("error", protocol.BAD_IMAGE) in seen and ("error", protocol.TOO_LARGE) in seen


async def test_a_shed_photo_has_the_dropped_shape(make_client: MakeClient,
                                                  astronaut_rgb: np.ndarray,
                                                  predictor: Predictor) -> None:
    """A photo deadline shorter than its decoding: the server sheds it (503, dropped)."""
    big = jpeg(cv2.resize(cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR), (2000, 2000)))
    client = await make_client(photo_deadline_ms=0.001)
    status, reply = await predict(client, big)
    assert status == 503 and reply["status"] == "dropped", reply
    check_shape(reply, predictor.classes)


@pytest.mark.parametrize("sample", ["coffee", "chelsea", "rocket"])
async def test_a_photo_without_a_person_gets_no_face(make_client: MakeClient, sample: str,
                                                     predictor: Predictor) -> None:
    """scikit-image's coffee cup (MediaPipe's 0.5 threshold alone saw a face, 0.588, in it),
    its cat and its rocket: no expression for things that are not faces."""
    from skimage import data

    client = await make_client()
    status, reply = await predict(client, jpeg(cv2.cvtColor(getattr(data, sample)(),
                                                            cv2.COLOR_RGB2BGR)))
    assert status == 200 and reply["status"] == "no_face", reply
    check_shape(reply, predictor.classes)
