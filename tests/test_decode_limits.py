"""Decode cost bounded before and while decoding: JPEG scan bombs, side and aspect-ratio
limits per entry point, decode processes that are killed when over budget or abandoned,
photo tiles padded by their own size, large phone JPEGs judged after DCT reduction, HEIC
photos, and libjpeg's complaints as one log line. Against the real server on 127.0.0.1
(`python -m streamfer.serve`), each attack bounded in time and size, each followed by an
honest client that must still be served.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from PIL import Image

from streamfer.imagecheck import CROP, FRAME, LIMITS, PHOTO, BadImage, check_image, jpeg_header
from streamfer.protocol import pack_frame
from streamfer.server.decoder import DecodePool, DecodeTimeout, decode, decode_inline
from tests.hostile import junk_jpegs, memory_mb, progressive_jpeg, scan_bomb
from tests.kit.serverproc import Server, running_server

ANSWER_S = 1.0  # a refused image is answered within this (docs/PROTOCOL.md)
RSS_GROWTH_MB = 300
ARGS = ("--device", "cpu", "--workers", "2", "--max-fps", "0", "--read-timeout-s", "5")


def http_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def server_args() -> tuple[str, ...]:
    """The module's `server` (tests/conftest.py) runs with ARGS."""
    return ARGS


@pytest.fixture(scope="module")
def face_gray(astronaut_rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)


@pytest.fixture(scope="module")
def crop_jpeg(face_gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.resize(face_gray[60:220, 150:310], (96, 96)))
    assert ok
    return buf.tobytes()


def jpeg_of(gray: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


async def ws_reply(server: Server, image: bytes, *, is_crop: bool) -> tuple[dict, float]:
    """One frame on a fresh connection: (its reply, seconds from send to reply)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(server.url) as ws:
        await ws.receive_json(timeout=10)  # greeting
        t = time.monotonic()
        await ws.send_bytes(pack_frame(1, image, is_crop=is_crop))
        reply = await ws.receive_json(timeout=30)
        return reply, time.monotonic() - t


async def post(server: Server, image: bytes) -> tuple[int, dict, float]:
    async with aiohttp.ClientSession() as session:
        t = time.monotonic()
        async with session.post(http_url(server) + "/api/predict", data=image,
                                timeout=aiohttp.ClientTimeout(total=60)) as resp:
            return resp.status, await resp.json(), time.monotonic() - t


async def served(server: Server, crop: bytes) -> None:
    reply, _ = await ws_reply(server, crop, is_crop=True)
    assert reply["status"] == "ok", reply


# -- the header check ---------------------------------------------------------------------


def test_the_marker_walk_counts_scans_as_libjpeg_decodes_them(face_gray: np.ndarray) -> None:
    baseline = jpeg_of(face_gray)
    assert check_image(baseline, FRAME).scans == 1
    assert check_image(baseline, FRAME).coding == "baseline"
    buf = BytesIO()
    Image.fromarray(face_gray).convert("RGB").save(buf, "JPEG", progressive=True)
    info = check_image(buf.getvalue(), PHOTO)
    assert (info.coding, info.scans, info.width, info.height) == ("progressive", 10, 512, 512)
    bomb = scan_bomb(progressive_jpeg(128, 128), 2000)
    with pytest.raises(BadImage, match="more than 12 scans"):
        check_image(bomb, CROP)
    assert jpeg_header(bomb, replace(CROP, max_scans=10**6)).scans == 2006
    # Arithmetic coding (SOF10, the other scan-bomb carrier) is refused by its marker.
    sof = baseline.index(b"\xff\xc0")
    with pytest.raises(BadImage, match="arithmetic-coded progressive"):
        check_image(baseline[:sof + 1] + b"\xca" + baseline[sof + 2:], PHOTO)
    # Fill bytes are legal and skipped; a flood of empty segments is refused.
    junk = junk_jpegs(baseline)
    assert check_image(junk["ff_fill"], FRAME).scans == 1
    with pytest.raises(BadImage, match="marker segments"):
        check_image(junk["empty_app1"], FRAME)


@pytest.mark.parametrize(("w", "h", "limits", "words"), [
    (16384, 1, CROP, "side limit"), (2000, 450, FRAME, "aspect ratio"),
    (1200, 1200, FRAME, "pixel limit"), (4000, 4000, PHOTO, None),
    (32000, 500, PHOTO, "side limit"), (16000, 800, PHOTO, "aspect ratio")])
def test_sides_aspect_and_pixels_are_limited_per_entry_point(w: int, h: int, limits, words
                                                             ) -> None:
    ok, png = cv2.imencode(".png", np.zeros((h, w), np.uint8))
    assert ok
    if words is None:
        assert check_image(png.tobytes(), limits).width == w
    else:
        with pytest.raises(BadImage, match=words):
            check_image(png.tobytes(), limits)


# -- the decode processes -----------------------------------------------------------------


def test_decode_returns_a_model_ready_crop_and_refuses_webp(crop_jpeg: bytes) -> None:
    out = decode(CROP, crop_jpeg, 48)
    assert out.pixels.shape == (48, 48) and out.size == (96, 96)
    buf = BytesIO()
    Image.new("L", (64, 64)).save(buf, "WEBP")
    with pytest.raises(BadImage, match="WEBP images are not accepted"):
        decode(PHOTO, buf.getvalue(), 48)


def test_only_a_tiny_baseline_crop_is_decoded_inline(crop_jpeg: bytes,
                                                     astronaut_rgb: np.ndarray) -> None:
    """The page's crop decodes where it is, to the same pixels as in a decode process;
    anything whose cost its size does not bound goes to the processes."""
    color = cv2.imencode(".jpg", cv2.resize(astronaut_rgb[60:220, 150:310], (96, 96)))[1]
    for image in (crop_jpeg, color.tobytes()):
        inline = decode_inline(image, 48)
        assert inline is not None
        np.testing.assert_array_equal(inline.pixels, decode(CROP, image, 48).pixels)
    big = jpeg_of(np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8))
    for image in (progressive_jpeg(96, 96), big, junk_jpegs(crop_jpeg, 20_000)["ff_fill"],
                  crop_jpeg[:len(crop_jpeg) // 2],
                  cv2.imencode(".png", np.zeros((96, 96), np.uint8))[1].tobytes()):
        assert decode_inline(image, 48) is None


async def test_an_over_budget_decode_is_killed_and_its_worker_replaced(crop_jpeg: bytes) -> None:
    """A real scan bomb under limits that let it through (its scans uncounted) but give it
    0.05 s (it decodes in several times that on a fast machine): refused at its budget, its
    process killed, the next image decoded by a new one."""
    bomb = scan_bomb(progressive_jpeg(512, 512, noise=True), 400)
    limits = {**LIMITS, "frame": replace(FRAME, max_scans=10**6, budget_s=0.05)}
    pool = DecodePool(1, face_size=48, limits=limits)
    await asyncio.get_running_loop().run_in_executor(None, pool.start)
    try:
        t = time.monotonic()
        with pytest.raises(DecodeTimeout, match=r"longer than 0\.05 s"):
            await pool.decode("frame", bomb)
        took = time.monotonic() - t
        print(f"\nover-budget decode refused after {took:.2f} s")
        assert took < ANSWER_S
        assert pool.replaced == 1
        assert (await pool.decode("crop", crop_jpeg)).pixels.shape == (48, 48)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


async def test_an_abandoned_decode_is_killed(crop_jpeg: bytes) -> None:
    """The caller goes (a client that left): its decode's process is killed at once."""
    bomb = scan_bomb(progressive_jpeg(512, 512, noise=True), 400)
    limits = {**LIMITS, "frame": replace(FRAME, max_scans=10**6, budget_s=60.0)}
    pool = DecodePool(1, face_size=48, limits=limits)
    await asyncio.get_running_loop().run_in_executor(None, pool.start)
    try:
        task = asyncio.ensure_future(pool.decode("frame", bomb))
        await asyncio.sleep(0.3)
        busy = next(iter(pool._all))
        task.cancel()
        t = time.monotonic()
        assert (await pool.decode("crop", crop_jpeg)).pixels.shape == (48, 48)
        print(f"\nabandoned decode: the next image answered after {time.monotonic() - t:.2f} s")
        assert not busy.proc.is_alive() and pool.replaced == 1
    finally:
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


# -- against the real server ----------------------------------------------------------------


async def test_scan_bomb_crops_and_frames_get_an_error_within_a_second(
        server: Server, crop_jpeg: bytes) -> None:
    for w, h, is_crop in ((128, 128, True), (640, 480, False)):
        bomb = scan_bomb(progressive_jpeg(w, h), 5000)
        assert len(bomb) < 262144
        reply, took = await ws_reply(server, bomb, is_crop=is_crop)
        print(f"\nscan bomb {w}x{h} ({len(bomb)} bytes): {reply['status']} after {took:.3f} s")
        assert reply["status"] == "error" and reply["code"] == "bad_image", reply
        assert "scans" in reply["error"] and took < ANSWER_S
    await served(server, crop_jpeg)


async def test_a_scan_bomb_photo_is_a_400_within_a_second(server: Server,
                                                          crop_jpeg: bytes) -> None:
    bomb = scan_bomb(progressive_jpeg(4000, 4000), 20000)
    status, body, took = await post(server, bomb)
    print(f"\nscan bomb photo ({len(bomb)} bytes): {status} after {took:.3f} s")
    assert status == 400 and "scans" in body["error"] and took < ANSWER_S
    await served(server, crop_jpeg)


async def test_full_frames_have_a_tighter_pixel_limit_than_photos(server: Server,
                                                                  crop_jpeg: bytes) -> None:
    for side, words in ((2000, "pixel limit"), (4000, "side limit")):  # 4 and 16 Mpx
        png = cv2.imencode(".png", np.zeros((side, side), np.uint8))[1].tobytes()
        reply, took = await ws_reply(server, png, is_crop=False)
        assert reply["status"] == "error" and words in reply["error"], reply
        assert took < ANSWER_S
        status, body, _ = await post(server, png)  # a photo may have 16 Mpx
        assert status == 200 and body["status"] == "no_face", body
    await served(server, crop_jpeg)


async def test_junk_crops_are_answered_and_honest_ones_go_on(server: Server,
                                                             crop_jpeg: bytes) -> None:
    for name, junk in junk_jpegs(crop_jpeg).items():
        reply, took = await ws_reply(server, junk, is_crop=True)
        print(f"\n{name}: {reply['status']} after {took:.3f} s")
        assert reply["status"] in ("ok", "error"), reply
        assert took < ANSWER_S
    await served(server, crop_jpeg)


async def test_heic_photos_are_answered(server: Server, astronaut_rgb: np.ndarray) -> None:
    """The iPhone's default format: decoded by libheif in the decode processes."""
    import pillow_heif

    buf = BytesIO()
    pillow_heif.from_pillow(Image.fromarray(cv2.resize(astronaut_rgb, (320, 320)))).save(
        buf, quality=60)
    heic = buf.getvalue()
    assert heic[4:12] == b"ftypheic"
    status, body, _ = await post(server, heic)
    assert status == 200 and body["status"] == "ok" and body["faces"], body
    reply, _ = await ws_reply(server, heic, is_crop=False)  # frames are JPEG or PNG
    assert reply["status"] == "error" and "HEIC" in reply["error"], reply


async def test_a_48_megapixel_jpeg_is_decoded_at_an_eighth(server: Server,
                                                          face_gray: np.ndarray) -> None:
    """8000x6000, as 48-50 Mpx phone modes save: over the photo pixel limit as declared,
    under it at 1/8 (DCT scaling), so it is answered, the face's box in full-size pixels."""
    canvas = np.full((6000, 8000), 120, np.uint8)
    canvas[1000:5000, 2000:6000] = cv2.resize(face_gray, (4000, 4000))
    photo = jpeg_of(canvas, quality=40)
    status, body, _ = await post(server, photo)
    print(f"\n8000x6000 JPEG ({len(photo)} bytes): {status} {body.get('status')} "
          f"{body.get('box')}")
    assert status == 200 and body["status"] == "ok", body
    x, y, w, _h = body["box"]
    assert 2000 <= x < 6000 and 1000 <= y < 5000 and w > 400, body["box"]


async def test_a_long_thin_photo_costs_memory_by_its_tiles(server: Server,
                                                          crop_jpeg: bytes) -> None:
    """A 16000x1000 PNG (the longest photo the limits take, 16 KB): its tiles run 7000 px
    past the image's edge, yet the server's peak memory grows by less than 300 MB; past the
    aspect-ratio limit (32000x500) it is refused unread."""
    before = memory_mb(server.proc.pid)["VmHWM"]
    for w, h, status in ((16000, 1000, 200), (32000, 500, 400)):
        _ok, png = cv2.imencode(".png", np.zeros((h, w), np.uint8))
        got, body, _took = await post(server, png.tobytes())
        assert got == status, body
    grew = memory_mb(server.proc.pid)["VmHWM"] - before
    print(f"\n16000x1000 PNG: peak RSS grew {grew:.0f} MB")
    assert grew < RSS_GROWTH_MB
    await served(server, crop_jpeg)


async def test_a_corrupt_jpeg_is_one_log_line(server: Server, face_gray: np.ndarray) -> None:
    data = bytearray(jpeg_of(cv2.resize(face_gray, (320, 240))))
    data[len(data) // 2:len(data) // 2 + 40] = b"\x13" * 40  # corrupt entropy-coded data
    data = bytes(data[:-400]) + b"\xff\xd9"  # and cut short
    reply, _ = await ws_reply(server, data, is_crop=False)
    assert reply["status"] in ("ok", "no_face", "error"), reply
    await asyncio.sleep(0.3)
    lines = server.log_path.read_text().splitlines()
    said = [line for line in lines if "Corrupt JPEG" in line or "Premature end" in line]
    assert said, lines[-5:]
    for line in said:  # logged by the server (timestamped, named), never raw libjpeg text
        assert " streamfer.server.decoder: " in line and "Traceback" not in line, line


@pytest.mark.slow
def test_sigterm_during_a_decode_attack_exits_within_the_bound(
        tiny_model_path: Path, tmp_path: Path, crop_jpeg: bytes) -> None:
    """Four clients streaming scan bombs and costly photos when SIGTERM comes: the process
    exits within the documented ~8 s."""
    bombs = [scan_bomb(progressive_jpeg(640, 480), 5000),
             scan_bomb(progressive_jpeg(2000, 2000, noise=True), 30)]

    async def attack(srv: Server, stop: asyncio.Event) -> None:
        async def photos() -> None:
            async with aiohttp.ClientSession() as session:
                while not stop.is_set():
                    try:
                        async with session.post(http_url(srv) + "/api/predict",
                                                data=bombs[1]) as resp:
                            await resp.read()
                    except aiohttp.ClientError:
                        return

        async def frames() -> None:
            async with aiohttp.ClientSession() as session, session.ws_connect(srv.url) as ws:
                i = 0
                while not stop.is_set() and not ws.closed:
                    i += 1
                    await ws.send_bytes(pack_frame(i, bombs[0], is_crop=False))
                    await asyncio.sleep(0.02)

        await asyncio.gather(photos(), photos(), frames(), frames(), return_exceptions=True)

    with running_server(tiny_model_path, ("--device", "cpu", "--workers", "2"),
                        log_path=tmp_path / "server.log", start_timeout=120) as srv:
        async def main() -> float:
            stop = asyncio.Event()
            task = asyncio.ensure_future(attack(srv, stop))
            await asyncio.sleep(3.0)
            t = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, srv.proc.wait, 30)
            took = time.monotonic() - t
            stop.set()
            await asyncio.wait_for(task, 10)
            return took

        try:
            took = asyncio.run(main())
        except subprocess.TimeoutExpired:
            pytest.fail("the server was still running 30 s after SIGTERM")
        print(f"\nSIGTERM during a decode attack: exited with {srv.proc.returncode} after "
              f"{took:.1f} s")
        for line in srv.log_path.read_text().splitlines():
            if any(w in line for w in ("shutting down", "cut a WebSocket", "in flight")):
                print(line)
        assert srv.proc.returncode == 0 and took < 10.0


def test_limits_are_documented_once() -> None:
    """docs/PROTOCOL.md names each entry point's limits as imagecheck defines them."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()
    for limits in LIMITS.values():
        row = next((line for line in doc.splitlines() if line.startswith(f"| {limits.name} ")),
                   None)
        assert row is not None, limits.name
        for value in (f"{limits.max_pixels:,}", f"{limits.max_side:,}", f"{limits.max_aspect:g}:1",
                      str(limits.max_scans), f"{limits.budget_s:g} s"):
            assert value in row, (value, row)
