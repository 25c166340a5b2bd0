"""The real server (aiohttp test server on 127.0.0.1) with a real TorchScript model and real
JPEG/PNG frames: the protocol of docs/PROTOCOL.md, bad input, backpressure, the HTTP API."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import torch
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

from streamfer import protocol
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_MODEL
from streamfer.protocol import pack_frame
from streamfer.server.app import STATE, init_app, origin_allowed
from tests.kit.inproc import Client, MakeClient, bound, config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = DEFAULT_MODEL  # the model the server runs by default


@pytest.fixture(scope="module")
def crop_jpeg(astronaut_rgb: np.ndarray) -> bytes:
    """A small grayscale face crop, as the page sends it (flag bit 0 set)."""
    gray = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)[60:220, 150:310]
    ok, buf = cv2.imencode(".jpg", cv2.resize(gray, (64, 64)))
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def frame_png(astronaut_rgb: np.ndarray) -> bytes:
    """The astronaut as a 320 px grayscale PNG (the page's frame width)."""
    gray = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)
    ok, buf = cv2.imencode(".png", cv2.resize(gray, (320, 320), interpolation=cv2.INTER_AREA))
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def blank_jpeg() -> bytes:
    """A plain gray full frame: no face in it."""
    ok, buf = cv2.imencode(".jpg", np.full((240, 320), 128, np.uint8))
    assert ok
    return buf.tobytes()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def connect(client: Client, **kw: Any) -> tuple[aiohttp.ClientWebSocketResponse,
                                                       dict[str, Any]]:
    ws = await bound(client.ws_connect("/ws", **kw))
    hello = await bound(ws.receive_json())
    return ws, hello


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    reply: dict[str, Any] = await bound(ws.receive_json())
    return reply


def assert_ok(reply: dict[str, Any], classes: list[str]) -> None:
    assert reply["status"] == "ok", reply
    assert set(reply["probs"]) == set(classes)
    assert sum(reply["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert reply["top"] == max(reply["probs"], key=reply["probs"].get)
    # Full frames add the face search: `track` (around the last face) and/or `detect`.
    assert {"decode", "queue", "inference", "total"} <= set(reply["timings_ms"]) <= {
        "decode", "track", "detect", "queue", "inference", "total"}
    assert reply["batch"] >= 1
    x, y, w, h = reply["box"]
    assert w > 0 and h > 0 and x >= 0 and y >= 0


# -- the protocol ------------------------------------------------------------------------------


async def test_round_trip_full_frame_and_crop(client: Client, frame_jpeg: bytes,
                                              crop_jpeg: bytes, predictor: Predictor) -> None:
    ws, hello = await connect(client)
    assert hello["type"] == "hello" and hello["protocol"] == 1
    assert hello["model"] == "tiny" and hello["classes"] == predictor.classes
    assert hello["input_size"] == 48 and hello["tta"] == "mirror"
    assert hello["limits"]["max_frame_bytes"] == 256 * 1024 and hello["limits"]["window"] == 2
    await ws.send_bytes(pack_frame(17, frame_jpeg))
    reply = await recv(ws)
    assert reply["type"] == "result" and reply["id"] == 17
    assert_ok(reply, hello["classes"])
    x, y, w, h = reply["box"]  # a face-sized box inside the 512 x 512 picture
    assert x + w <= 512 and y + h <= 512 and 60 <= w <= 300
    await ws.send_bytes(pack_frame(18, crop_jpeg, is_crop=True))
    reply = await recv(ws)
    assert reply["id"] == 18
    assert_ok(reply, hello["classes"])
    assert reply["box"] == [0, 0, 64, 64]  # a crop is its own box
    await ws.close()


async def test_png_frames_are_accepted(client: Client, frame_png: bytes) -> None:
    ws, hello = await connect(client)
    await ws.send_bytes(pack_frame(1, frame_png))
    assert_ok(await recv(ws), hello["classes"])
    await ws.close()


async def test_bad_messages_get_clear_errors_and_the_connection_stays_usable(
        make_client: MakeClient, frame_jpeg: bytes, blank_jpeg: bytes,
        crop_jpeg: bytes) -> None:
    # Every message counts against the frame rate (docs/PROTOCOL.md): ten messages in a few
    # milliseconds would pass the default burst, so this test lifts the cap.
    ws, hello = await connect(await make_client(max_fps=0))
    cases: list[tuple[Callable[[], Awaitable[None]], Any, str, str]] = [
        (lambda: ws.send_bytes(pack_frame(1, frame_jpeg[:200])), 1, "error", "not a decodable"),
        (lambda: ws.send_bytes(pack_frame(2, b"\x00garbage" * 50)), 2, "error", "decodable"),
        (lambda: ws.send_bytes(b""), None, "error", "shorter than the 8-byte frame header"),
        (lambda: ws.send_bytes(b"\x01\x00\x00"), None, "error", "3 bytes"),
        (lambda: ws.send_str("hello server"), None, "error", "binary message"),
        (lambda: ws.send_bytes(b"\x02" + pack_frame(3, crop_jpeg)[1:]), None, "error",
         "unknown protocol version 2"),
        (lambda: ws.send_bytes(pack_frame(4, b"")), 4, "error", "no image"),
        (lambda: ws.send_bytes(pack_frame(5, blank_jpeg)), 5, "no_face", ""),
        (lambda: ws.send_bytes(pack_frame(6, crop_jpeg, is_crop=True)), 6, "ok", ""),
    ]
    for send, fid, status, words in cases:
        await send()
        reply = await recv(ws)
        assert reply["type"] == "result" and reply["id"] == fid, reply
        assert reply["status"] == status, reply
        if status == "error":
            assert words in reply["error"] and reply["code"] in ("bad_message", "bad_image")
    # A blank crop has no face to find but is still a crop: it is classified.
    await ws.send_bytes(pack_frame(7, blank_jpeg, is_crop=True))
    assert_ok(await recv(ws), hello["classes"])
    await ws.close()


async def test_no_face_reply_has_timings(client: Client, blank_jpeg: bytes) -> None:
    ws, _ = await connect(client)
    await ws.send_bytes(pack_frame(9, blank_jpeg))
    reply = await recv(ws)
    assert reply == {"type": "result", "id": 9, "status": "no_face",
                     "timings_ms": reply["timings_ms"]}
    assert set(reply["timings_ms"]) == {"decode", "detect", "total"}
    await ws.close()


async def test_oversize_frame_gets_an_error_and_the_connection_stays_open(
        make_client: MakeClient, crop_jpeg: bytes) -> None:
    client = await make_client(max_frame_bytes=50_000)
    ws, hello = await connect(client)
    await ws.send_bytes(pack_frame(1, b"\xff" * 120_000))
    reply = await recv(ws)
    assert reply["id"] == 1 and reply["code"] == "too_large"
    assert reply["error"] == "frame of 120000 bytes exceeds max_frame_bytes 50000"
    await ws.send_bytes(pack_frame(2, crop_jpeg, is_crop=True))
    assert_ok(await recv(ws), hello["classes"])
    await ws.close()


async def test_message_past_the_hard_limit_closes_with_1009(make_client: MakeClient) -> None:
    client = await make_client(max_frame_bytes=10_000)
    limit = client.app[STATE].config.max_message_bytes
    ws, _ = await connect(client)
    await ws.send_bytes(pack_frame(1, b"\xff" * (limit + 1)))
    msg = await bound(ws.receive())
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_many_clients_get_exactly_one_reply_per_frame(
        make_client: MakeClient, crop_jpeg: bytes, frame_jpeg: bytes) -> None:
    """8 clients x 20 frames sent as fast as possible: every frame answered exactly once;
    the newest frame of each client is never superseded, so it is answered ok."""
    client = await make_client(max_fps=0, max_batch=8)
    n_clients, n_frames = 8, 20

    async def one_client(c: int) -> dict[int, dict[str, Any]]:
        ws, _ = await connect(client)
        image, crop = (frame_jpeg, False) if c % 4 == 0 else (crop_jpeg, True)
        for i in range(n_frames):
            await ws.send_bytes(pack_frame(c * 1000 + i, image, is_crop=crop))
        replies: dict[int, dict[str, Any]] = {}
        while len(replies) < n_frames:
            reply = await recv(ws)
            assert reply["id"] not in replies, f"second reply for frame {reply['id']}"
            replies[reply["id"]] = reply
        await ws.close()
        return replies

    results = await bound(asyncio.gather(*(one_client(c) for c in range(n_clients))))
    batches = []
    for c, replies in enumerate(results):
        assert set(replies) == {c * 1000 + i for i in range(n_frames)}
        statuses = {r["status"] for r in replies.values()}
        assert statuses <= {"ok", "dropped"}, statuses
        assert all(r["reason"] == "superseded" for r in replies.values()
                   if r["status"] == "dropped")
        assert replies[c * 1000 + n_frames - 1]["status"] == "ok"
        batches += [r["batch"] for r in replies.values() if r["status"] == "ok"]
    assert max(batches) <= 8
    print(f"ok frames: {len(batches)}; batch sizes seen: {sorted(set(batches))}")


async def test_a_client_that_keeps_the_window_loses_no_frames(
        make_client: MakeClient, crop_jpeg: bytes) -> None:
    """The page's flow control (at most `window` unanswered) never gets a frame superseded."""
    client = await make_client(max_fps=0)
    ws, hello = await connect(client)
    window, total, sent, answered = hello["limits"]["window"], 20, 0, []
    while len(answered) < total:
        while sent < total and sent - len(answered) < window:
            await ws.send_bytes(pack_frame(sent, crop_jpeg, is_crop=True))
            sent += 1
        answered.append(await recv(ws))
    assert sorted(r["id"] for r in answered) == list(range(total))
    assert [r["status"] for r in answered] == ["ok"] * total
    await ws.close()


async def test_newer_frame_supersedes_the_waiting_one(make_client: MakeClient,
                                                      crop_jpeg: bytes) -> None:
    client = await make_client(max_fps=0)
    ws, _ = await connect(client)
    for i in range(3):  # sent at once: 0 in flight, 1 waits, 2 replaces 1
        await ws.send_bytes(pack_frame(i, crop_jpeg, is_crop=True))
    replies = {r["id"]: r for r in [await recv(ws) for _ in range(3)]}
    assert replies[1] == {"type": "result", "id": 1, "status": "dropped",
                          "reason": "superseded"}
    assert replies[0]["status"] == "ok" and replies[2]["status"] == "ok"
    await ws.close()


async def test_several_faces_of_one_camera_frame_each_get_their_reply(
        make_client: MakeClient, crop_jpeg: bytes) -> None:
    """Crops of two faces (FLAG_FACE ids) sent together, each face at the frame-rate cap and
    within its own window: none supersedes another and every reply echoes its face. A face
    beyond max_faces takes an idle face's slot, else is dropped "overloaded"."""
    client = await make_client(max_fps=2)  # a burst of 2 per face
    ws, hello = await connect(client)
    assert hello["limits"]["max_faces"] == protocol.MAX_FACES
    frames = [(fid, face) for fid in range(2) for face in (3, 9)]  # 2 camera frames, 2 faces
    for fid, face in frames:
        await ws.send_bytes(pack_frame(fid, crop_jpeg, is_crop=True, face_id=face))
    replies = [await recv(ws) for _ in frames]
    assert sorted((r["id"], r["face"]) for r in replies) == sorted(frames)
    assert [r["status"] for r in replies] == ["ok"] * len(frames), replies
    # One more face than a connection may stream, while all are busy: dropped, said so.
    faces = range(20, 20 + protocol.MAX_FACES + 1)
    for face in faces:
        await ws.send_bytes(pack_frame(5, crop_jpeg, is_crop=True, face_id=face))
    more = [await recv(ws) for _ in faces]
    assert {r["face"] for r in more} == set(faces)
    assert all(r["status"] == "ok" or r.get("reason") == "overloaded" for r in more), more
    assert sum(r["status"] == "ok" for r in more) >= protocol.MAX_FACES  # (idle slots reused)
    # A frame that names no face: no "face" in its reply.
    await ws.send_bytes(pack_frame(6, crop_jpeg, is_crop=True))
    reply = await recv(ws)
    assert reply["id"] == 6 and "face" not in reply and reply["status"] == "ok"
    await ws.close()


async def test_messages_that_are_not_frames_count_against_the_rate(
        make_client: MakeClient, crop_jpeg: bytes) -> None:
    client = await make_client(max_fps=1)  # a burst of 2
    ws, _ = await connect(client)
    await ws.send_str("not a frame")
    await ws.send_bytes(b"")
    assert (await recv(ws))["code"] == "bad_message"
    assert (await recv(ws))["code"] == "bad_message"
    await ws.send_bytes(pack_frame(1, crop_jpeg, is_crop=True))  # the burst is spent
    assert await recv(ws) == {"type": "result", "id": 1, "status": "dropped",
                              "reason": "rate_limited"}
    await ws.close()


async def test_frames_over_the_rate_cap_are_dropped(make_client: MakeClient,
                                                    crop_jpeg: bytes) -> None:
    client = await make_client(max_fps=1)
    ws, hello = await connect(client)
    assert hello["limits"]["max_fps"] == 1 and hello["limits"]["suggested_fps"] == 1
    for i in range(6):
        await ws.send_bytes(pack_frame(i, crop_jpeg, is_crop=True))
    replies = [await recv(ws) for _ in range(6)]
    assert sorted(r["id"] for r in replies) == list(range(6))
    assert any(r.get("reason") == "rate_limited" for r in replies)
    assert next(r for r in replies if r["id"] == 0)["status"] == "ok"  # within the burst
    await ws.close()


async def test_deadline_drops_frames_that_waited_too_long(make_client: MakeClient,
                                                          frame_jpeg: bytes) -> None:
    """With a deadline far shorter than decoding a frame takes, frames are dropped, not run."""
    client = await make_client(deadline_ms=0.001, max_fps=0)
    ws, _ = await connect(client)
    await ws.send_bytes(pack_frame(1, frame_jpeg))
    assert await recv(ws) == {"type": "result", "id": 1, "status": "dropped",
                              "reason": "deadline"}
    await ws.close()


async def test_client_leaving_with_frames_in_flight_does_not_hurt_others(
        client: Client, frame_jpeg: bytes, crop_jpeg: bytes) -> None:
    state = client.app[STATE]
    leaver, _ = await connect(client)
    for i in range(5):
        await leaver.send_bytes(pack_frame(i, frame_jpeg))
    await leaver.close()
    stayer, hello = await connect(client)
    for i in range(3):
        await stayer.send_bytes(pack_frame(100 + i, crop_jpeg, is_crop=True))
        reply = await recv(stayer)
        assert reply["id"] == 100 + i
        assert_ok(reply, hello["classes"])
    for _ in range(300):  # the leaver's connection is cleaned up (bounded poll)
        if len(state.streams) == 1:
            break
        await asyncio.sleep(0.02)
    assert len(state.streams) == 1
    await stayer.close()


async def test_graceful_shutdown_answers_frames_then_closes_1001(
        aiohttp_server: Any, predictor: Predictor, tiny_model_path: Path,
        frame_jpeg: bytes) -> None:
    server: TestServer = await aiohttp_server(init_app(config(tiny_model_path), predictor))
    registry = server.app[STATE].metrics.registry
    async with aiohttp.ClientSession() as session:
        ws = await bound(session.ws_connect(server.make_url("/ws")))
        await bound(ws.receive_json())
        await ws.send_bytes(pack_frame(1, frame_jpeg))
        await ws.send_bytes(pack_frame(2, frame_jpeg))
        for _ in range(1000):  # until the server has read both (bounded poll)
            if registry.get_sample_value("streamfer_frames_received_total",
                                         {"source": "ws"}) == 2:
                break
            await asyncio.sleep(0.005)
        closing = asyncio.ensure_future(server.close())
        try:
            messages = [await recv(ws) for _ in range(3)]
            assert [m for m in messages if m["type"] == "closing"] == [protocol.closing()]
            replies = {r["id"]: r for r in messages if r["type"] == "result"}
            assert set(replies) == {1, 2}
            assert replies[1]["status"] == "ok"  # it was in flight: answered
            assert replies[2]["status"] in ("ok", "dropped")
            assert replies[2].get("reason", "shutting_down") == "shutting_down"
            msg = await bound(ws.receive())
            assert msg.type is WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY
        finally:
            await bound(closing)


# -- connection safety -------------------------------------------------------------------------


async def test_foreign_origin_is_refused_with_403(client: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await bound(client.ws_connect("/ws", origin="https://evil.example"))
    assert err.value.status == 403
    host = f"{client.server.host}:{client.server.port}"
    ws, hello = await connect(client, origin=f"http://{host}")  # the page's own origin
    assert hello["type"] == "hello"
    await ws.close()


async def test_allow_origin_admits_listed_origins(make_client: MakeClient) -> None:
    client = await make_client(allow_origin=("https://phone.example",))
    ws, _ = await connect(client, origin="https://phone.example")
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await bound(client.ws_connect("/ws", origin="https://other.example"))


@pytest.mark.parametrize(("origin", "host", "allowed", "expected"), [
    (None, "a:8080", (), True),  # not a browser
    ("http://a:8080", "a:8080", (), True),
    ("https://a", "a", (), True),  # https page behind a TLS-terminating proxy
    ("https://a:443", "a", (), True),
    ("HTTP://A:8080/", "a:8080", (), True),
    ("http://[::1]:8080", "[::1]:8080", (), True),
    ("http://a:8081", "a:8080", (), False),  # another port is another origin
    ("http://b:8080", "a:8080", (), False),
    ("http://a.evil:8080", "a:8080", (), False),
    ("null", "a:8080", (), False),
    ("file://", "a:8080", (), False),
    ("http://a:99999", "a:8080", (), False),
    ("http://b:1", "a:8080", ("http://b:1",), True),
    ("http://b:1", "a:8080", ("*",), True),
    ("http://b:1", None, (), False),
])
def test_origin_rule(origin: str | None, host: str | None, allowed: tuple[str, ...],
                     expected: bool) -> None:
    assert origin_allowed(origin, host, allowed) is expected


async def test_connections_beyond_the_limit_get_503(make_client: MakeClient) -> None:
    client = await make_client(max_connections=2)
    first, _ = await connect(client)
    second, _ = await connect(client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await bound(client.ws_connect("/ws"))
    assert err.value.status == 503
    await first.close()
    for _ in range(300):  # the freed slot becomes available (bounded poll)
        if len(client.app[STATE].streams) < 2:
            break
        await asyncio.sleep(0.02)
    third, hello = await connect(client)
    assert hello["type"] == "hello"
    await second.close()
    await third.close()


# -- HTTP --------------------------------------------------------------------------------------


async def test_predict_jpeg_png_and_multipart(client: Client, frame_jpeg: bytes,
                                              frame_png: bytes, predictor: Predictor) -> None:
    for body, ctype in ((frame_jpeg, "image/jpeg"), (frame_png, "image/png")):
        resp = await client.post("/api/predict", data=body, headers={"Content-Type": ctype})
        assert resp.status == 200
        reply = await resp.json()
        assert "id" not in reply
        assert_ok(reply, predictor.classes)
    form = aiohttp.FormData()
    form.add_field("image", frame_jpeg, filename="face.jpg", content_type="image/jpeg")
    resp = await client.post("/api/predict", data=form)
    assert resp.status == 200
    assert_ok(await resp.json(), predictor.classes)


async def test_predict_crop_and_no_face(client: Client, blank_jpeg: bytes,
                                        predictor: Predictor) -> None:
    resp = await client.post("/api/predict", data=blank_jpeg)
    assert resp.status == 200 and (await resp.json())["status"] == "no_face"
    resp = await client.post("/api/predict?crop=1", data=blank_jpeg)
    reply = await resp.json()
    assert resp.status == 200
    assert_ok(reply, predictor.classes)
    assert reply["box"] == [0, 0, 320, 240]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"this is not an image", 400, "not a decodable JPEG/PNG image"),
    (b"", 400, "empty body"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 400, "decodable"),
    (b"\xff" * 300_000, 400, "decodable"),  # over a frame's limit; photos have their own
])
async def test_predict_bad_input_is_a_4xx_with_a_message(client: Client, body: bytes,
                                                         status: int, words: str) -> None:
    resp = await client.post("/api/predict", data=body, headers={"Content-Type": "image/jpeg"})
    assert resp.status == status
    reply = await resp.json()
    assert reply["status"] == "error" and words in reply["error"]


async def test_predict_multipart_without_image_field(client: Client, frame_jpeg: bytes) -> None:
    form = aiohttp.FormData()
    form.add_field("picture", frame_jpeg, filename="face.jpg", content_type="image/jpeg")
    resp = await client.post("/api/predict", data=form)
    assert resp.status == 400
    assert "no field named 'image'" in (await resp.json())["error"]


async def test_predict_refuses_a_decompression_bomb(client: Client) -> None:
    ok, buf = cv2.imencode(".png", np.zeros((5000, 4000), np.uint8))  # 20 Mpx, tiny file
    assert ok and len(buf) < 256 * 1024
    resp = await client.post("/api/predict", data=buf.tobytes())
    assert resp.status == 400
    assert "pixel limit" in (await resp.json())["error"]


async def test_healthz(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["model"] == "tiny" and body["device"] == "cpu"
    assert body["face_detection"] is True


async def test_metrics_count_frames_replies_and_batches(client: Client, crop_jpeg: bytes,
                                                        blank_jpeg: bytes) -> None:
    ws, _ = await connect(client)
    await ws.send_bytes(pack_frame(1, crop_jpeg, is_crop=True))
    await recv(ws)
    await ws.send_bytes(pack_frame(2, blank_jpeg))
    await recv(ws)
    await ws.send_str("garbage")
    await recv(ws)
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    for line in ('streamfer_frames_received_total{source="ws"} 3.0',
                 'streamfer_replies_total{status="ok"} 1.0',
                 'streamfer_replies_total{status="no_face"} 1.0',
                 'streamfer_errors_total{code="bad_message"} 1.0',
                 "streamfer_batch_size_count 1.0",
                 'streamfer_frame_latency_seconds_count{stage="inference"} 1.0',
                 "streamfer_connections 1.0",
                 "streamfer_queue_depth 0.0"):
        assert line in text, line
    await ws.close()


async def test_index_serves_the_page_when_present(make_client: MakeClient,
                                                  tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>streamfer</title>")
    (tmp_path / "app.js").write_text("console.log('hi')")
    client = await make_client(web_dir=tmp_path)
    resp = await client.get("/")
    assert resp.status == 200 and "<title>streamfer</title>" in await resp.text()
    resp = await client.get("/app.js")
    assert resp.status == 200 and "console.log" in await resp.text()
    resp = await client.get("/healthz")  # the static folder does not shadow the API
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    ws, hello = await connect(client)
    assert hello["type"] == "hello"
    await ws.close()


async def test_the_client_module_and_its_example_are_served(make_client: MakeClient) -> None:
    """/streamfer.js (the embeddable client) with every module it imports, as JavaScript, and
    the embedding example that imports it: what a browser fetches, from the real web/."""
    client = await make_client(web_dir=ROOT / "web")
    seen: set[str] = set()
    todo = ["/streamfer.js"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type in ("text/javascript", "application/javascript"), path
        text = await resp.text()
        folder = path.rsplit("/", 1)[0]
        todo += [f"{folder}/{name}" for name in re.findall(r'from "\./([\w.-]+\.js)"', text)]
    assert {"/streamfer.js", "/stream.js", "/capture.js", "/detectors.js"} <= seen
    resp = await client.get("/examples/embed.html")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert 'from "../streamfer.js"' in page
    assert len(page.splitlines()) <= 45  # "a page of about 40 lines"


async def test_index_without_the_page_says_so(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 404
    assert "page is not installed" in await resp.text()


ASTRONAUT_FACE_CENTRE = (224, 114)  # her nose, in the 512 x 512 picture


def on_the_face(box: list[int]) -> bool:
    x, y, w, h = box
    cx, cy = ASTRONAUT_FACE_CENTRE
    return x <= cx <= x + w and y <= cy <= y + h and 60 <= w <= 200


async def test_box_is_on_the_astronauts_face(client: Client, frame_jpeg: bytes) -> None:
    ws, _ = await connect(client)
    await ws.send_bytes(pack_frame(1, frame_jpeg))
    reply = await recv(ws)
    assert reply["status"] == "ok" and on_the_face(reply["box"]), reply["box"]
    await ws.close()


# -- the shipped model -------------------------------------------------------------------------


async def test_shipped_model_finds_the_astronaut_and_gives_every_class(
        aiohttp_client: Any, tiny_model_path: Path, frame_jpeg: bytes) -> None:
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"{SHIPPED_MODEL} not present yet (the training run produces it)")
    torch.set_num_threads(1)
    shipped = Predictor(SHIPPED_MODEL, device="cpu")
    client = await aiohttp_client(init_app(config(SHIPPED_MODEL), shipped))
    ws, hello = await connect(client)
    assert hello["classes"] == shipped.classes and len(shipped.classes) >= 2
    await ws.send_bytes(pack_frame(1, frame_jpeg))
    reply = await recv(ws)
    assert_ok(reply, shipped.classes)
    x, y, w, h = reply["box"]
    assert 60 <= w <= 300 and x + w <= 512 and y + h <= 512
    assert on_the_face(reply["box"]), reply["box"]
    await ws.close()


def test_the_cpu_optimised_model_gives_the_same_probabilities(tiny_model_path: Path) -> None:
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    for path in (SHIPPED_MODEL, tiny_model_path):
        if not path.is_file():
            continue
        fast = Predictor(path, device="cpu", runtime="torchscript")
        plain = Predictor(path, device="cpu", optimize=False, runtime="torchscript")
        assert fast.optimized and not plain.optimized
        for tta in fast.tta_modes:
            fast.tta = plain.tta = tta
            np.testing.assert_allclose(fast.forward(faces), plain.forward(faces), atol=1e-5)
        bigger = np.zeros((2, 48, 48), np.uint8)  # another batch size after the first
        np.testing.assert_allclose(fast.forward(bigger), plain.forward(bigger), atol=1e-5)


async def test_without_haar_cascades_full_frames_get_a_clear_error_and_crops_still_work(
        make_client: MakeClient, frame_jpeg: bytes, crop_jpeg: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenCV 5 wheels have no CascadeClassifier; this OpenCV has one, so take it away. Only
    # the Haar detector needs it (BlazeFace, the default, does not: see test_detection.py).
    monkeypatch.delattr(cv2, "CascadeClassifier")
    client = await make_client(detector="haar")
    assert (await (await client.get("/healthz")).json())["face_detection"] is False
    ws, _ = await connect(client)
    await ws.send_bytes(pack_frame(1, frame_jpeg))
    reply = await recv(ws)
    assert reply["status"] == "error" and reply["code"] == "no_detector", reply
    assert "opencv-python-headless<5" in reply["error"]
    await ws.send_bytes(pack_frame(2, crop_jpeg, is_crop=True))
    assert_ok(await recv(ws), ["anger", "happiness", "sadness", "surprise", "neutral"])
    resp = await client.post("/api/predict", data=frame_jpeg)
    assert resp.status == 501 and (await resp.json())["code"] == "no_detector"
    await ws.close()
