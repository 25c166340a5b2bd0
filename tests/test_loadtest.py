"""The load test against the real server, and against servers that break the protocol.

The load test's whole job is to notice when a server breaks the protocol's promise of one
reply per frame, so besides a clean run against the real server it is pointed at tiny
misbehaving servers (silent; answering only some frames) and must report every missing reply
and exit non-zero.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp import web

from streamfer import protocol
from streamfer.loadtest.cli import LoadTestConfig, parse_args
from streamfer.loadtest.frames import CROP_SIDES, FRAME_WIDTH, load_frames
from tests.kit.serverproc import running_server

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("sent", "answered", "dropped", "errors", "throughput_fps", "rtt_ms")
HELLO = {"type": "hello", "protocol": 1, "model": "fake", "classes": ["a", "b"],
         "input_size": 48, "tta": "mirror",
         "limits": {"max_frame_bytes": 262144, "max_fps": 30, "suggested_fps": 15, "window": 2}}
# Tests of what is reported, not of this (shared, busy) machine's speed, pass these.
LENIENT = ("--target-ms", "10000", "--max-loss", "1")


def loadtest_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamfer.loadtest", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


async def loadtest_cli_async(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """The CLI in a subprocess, awaited so a server in this test's event loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamfer.loadtest", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


# -- the frames it sends ---------------------------------------------------------------------

def test_crops_are_small_gray_jpegs_flagged_as_crops() -> None:
    frames = load_frames("crops")
    assert frames.is_crop
    sides = set()
    for i, image in enumerate(frames.images):
        msg = frames.message(len(frames.images) * 7 + i)  # cycles through the set
        version, flags, reserved, fid = protocol.HEADER.unpack_from(msg)
        assert (version, flags, reserved, fid) == (1, 1, 0, len(frames.images) * 7 + i)
        assert msg[protocol.HEADER.size:] == image and image[:2] == b"\xff\xd8"  # JPEG
        gray = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
        assert gray.ndim == 2 and gray.shape[0] == gray.shape[1]
        sides.add(gray.shape[0])
    assert sides == set(CROP_SIDES)


def test_frames_are_320_px_colour_jpegs_without_the_crop_flag() -> None:
    frames = load_frames("frames")
    assert not frames.is_crop
    msg = frames.message(2**32 + 5)  # ids wrap at 32 bits as the header's field does
    assert protocol.HEADER.unpack_from(msg) == (1, 0, 0, 5)
    img = cv2.imdecode(np.frombuffer(msg[protocol.HEADER.size:], np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (FRAME_WIDTH, FRAME_WIDTH, 3)  # the astronaut is square


def test_images_folder_with_photos_and_ready_made_faces(tmp_path: Path,
                                                        astronaut_rgb: np.ndarray) -> None:
    cv2.imwrite(str(tmp_path / "photo.jpg"), cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "face.png"), np.full((48, 48), 128, np.uint8))  # no face found
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    crops = load_frames("crops", tmp_path)
    assert crops.is_crop and len(crops.images) == 2 * len(CROP_SIDES)
    frames = load_frames("frames", tmp_path)
    assert not frames.is_crop and len(frames.images) == 2
    widths = {cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR).shape[1]
              for b in frames.images}
    assert widths == {FRAME_WIDTH}


def test_config_rejects_bad_flags() -> None:
    assert parse_args(["--clients", "3", "--kind", "frames"]).clients == 3
    with pytest.raises(ValueError, match="ws://"):
        LoadTestConfig(url="http://127.0.0.1:8080/ws")
    for bad in (["--clients", "0"], ["--fps", "0"], ["--seconds", "-1"], ["--window", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# -- against servers that break the protocol --------------------------------------------------

OK_BODY = {"status": "ok", "box": [0, 0, 48, 48], "probs": {"a": 0.4, "b": 0.6}, "top": "b",
           "batch": 1, "timings_ms": {"decode": 0.1, "queue": 0.1, "inference": 0.1,
                                      "total": 0.3}}


def fake_server(answer, body: dict = OK_BODY) -> web.Application:
    """A /ws endpoint that greets, then replies `body` to the frames `answer(frame_id)` picks."""

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(HELLO)
        async for msg in ws:
            frame_id = protocol.parse_frame(msg.data)[0].frame_id
            if answer(frame_id):
                await ws.send_json({"type": "result", "id": frame_id, **body})
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    return app


async def test_a_silent_server_fails_the_run_with_every_frame_missing(aiohttp_server) -> None:
    server = await aiohttp_server(fake_server(lambda _fid: False), host="127.0.0.1")
    url = f"ws://127.0.0.1:{server.port}/ws"
    rc, out, _ = await loadtest_cli_async("--url", url, "--clients", "2", "--fps", "10",
                                          "--seconds", "1", "--grace", "0.5", "--json")
    s = json.loads(out)
    assert rc == 1
    assert s["sent"] == 4 and s["answered"] == 0 and s["missing"] == 4  # 2 windows of 2
    assert sorted(s["missing_ids"]) == [f"client {c} frame {f}" for c in (0, 1) for f in (0, 1)]
    assert s["not_sent_window_full"] == s["slots"] - 4 and s["slots"] == 20
    assert not s["passed"] and "4 of 4 frames got no reply" in s["failures"][0]

    rc, out, _ = await loadtest_cli_async("--url", url, "--clients", "1", "--fps", "10",
                                          "--seconds", "0.5", "--grace", "0.3")
    assert rc == 1
    assert "MISSING   client 0 frame 0, client 0 frame 1" in out
    assert "FAILED: 2 of 2 frames got no reply" in out


async def test_frames_the_server_skips_are_reported_by_id(aiohttp_server) -> None:
    server = await aiohttp_server(fake_server(lambda fid: fid % 3 != 2), host="127.0.0.1")
    rc, out, _ = await loadtest_cli_async(
        "--url", f"ws://127.0.0.1:{server.port}/ws", "--clients", "2", "--fps", "20",
        "--seconds", "1.5", "--grace", "0.3", "--json")
    s = json.loads(out)
    assert rc == 1
    assert s["answered"] == s["ok"] > 0 and s["sent"] == s["answered"] + s["missing"]
    missing = [int(m.rsplit(" ", 1)[1]) for m in s["missing_ids"]]
    assert missing and all(fid % 3 == 2 for fid in missing)
    assert s["rtt_ms"]["n"] == s["answered"]


async def test_error_replies_are_counted_by_reason_and_fail_the_run(aiohttp_server) -> None:
    body = {"status": "error", "code": "bad_image", "error": "not a decodable JPEG/PNG image"}
    server = await aiohttp_server(fake_server(lambda _fid: True, body), host="127.0.0.1")
    rc, out, _ = await loadtest_cli_async(
        "--url", f"ws://127.0.0.1:{server.port}/ws", "--clients", "2", "--fps", "10",
        "--seconds", "0.5", "--json")
    s = json.loads(out)
    assert rc == 1 and s["sent"] == s["answered"] == 10 and s["ok"] == 0
    assert s["errors_by_reason"] == {"reply: bad_image: not a decodable JPEG/PNG image": 10}
    assert s["failures"] == ["10 error replies"]


async def test_a_refused_connection_is_a_failure() -> None:
    rc, out, _ = await loadtest_cli_async("--url", "ws://127.0.0.1:9/ws", "--clients", "2",
                                          "--seconds", "0.2", "--json")
    s = json.loads(out)
    assert rc == 1 and s["connected"] == 0 and s["errors"] == 2 and s["sent"] == 0


def test_an_unreachable_server_is_reported_as_such() -> None:
    proc = loadtest_cli("--url", "ws://127.0.0.1:9/ws", "--clients", "2", "--seconds", "0.2")
    assert proc.returncode == 1
    assert "no connection" in proc.stdout and "is a server running at this URL?" in proc.stdout
    assert "model None" not in proc.stdout and "CPU" not in proc.stdout


# -- against the real server (`server`, tests/conftest.py) ------------------------------------

def test_real_server_answers_every_frame(server, tmp_path: Path) -> None:
    png = tmp_path / "rtt.png"
    proc = loadtest_cli("--url", server.url, "--clients", "3", "--fps", "15",
                        "--seconds", "2", "--json", "--histogram", str(png), *LENIENT)
    s = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(key in s for key in REQUIRED)
    assert s["sent"] == s["answered"] > 0 and s["missing"] == 0
    assert s["errors"] == 0 and s["errors_by_reason"] == {} and s["passed"]
    assert s["ok"] + s["dropped"] == s["answered"]  # crops: never no_face
    assert s["model"] == "tiny" and s["window"] == 2 and s["kind"] == "crops"
    r = s["rtt_ms"]
    assert set(r) >= {"p50", "p90", "p99", "max"}
    assert 0 < r["p50"] <= r["p90"] <= r["p99"] <= r["max"]
    assert sum(s["batch"]["counts"].values()) == s["ok"]
    assert s["server_ms_median"]["inference"] is not None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_server_full_frames_text_report(server) -> None:
    proc = loadtest_cli("--url", server.url, "--clients", "2", "--fps", "10",
                        "--seconds", "1", "--kind", "frames", *LENIENT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED: every frame sent got exactly one reply, p99 " in proc.stdout
    assert "rtt ms    p50" in proc.stdout and "server ms median: decode" in proc.stdout


def test_a_foreign_origin_is_refused_and_reported(server) -> None:
    proc = loadtest_cli("--url", server.url, "--clients", "2", "--seconds", "0.3",
                        "--origin", "http://elsewhere.example", "--json")
    s = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert s["errors_by_reason"] == {"connect failed: HTTP 403": 2} and s["sent"] == 0


def test_the_verdict_fails_a_run_over_the_latency_target(server) -> None:
    proc = loadtest_cli("--url", server.url, "--clients", "2", "--fps", "10",
                        "--seconds", "1", "--target-ms", "0.001", "--max-loss", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED: p99 round trip" in proc.stdout and "over --target-ms 0.001" in proc.stdout
    assert "PASSED" not in proc.stdout


def test_the_verdict_fails_a_run_that_loses_frames(server) -> None:
    """90 fps against the server's 30 fps cap: frames come back dropped/rate_limited (or,
    on a busy machine, the window of 2 holds them back unsent): every frame sent is
    answered, yet the run lost frames, so it fails and says why."""
    proc = loadtest_cli("--url", server.url, "--clients", "1", "--fps", "90",
                        "--seconds", "1", "--target-ms", "10000", "--max-loss", "0.05",
                        "--json")
    s = json.loads(proc.stdout)
    assert proc.returncode == 1 and not s["passed"], s["failures"]
    assert s["missing"] == 0 and s["dropped"] + s["not_sent_window_full"] > 0
    assert s["loss"] > 0.05 and any("over --max-loss 5%" in f for f in s["failures"])


def test_ramp_reports_every_step(server) -> None:
    proc = loadtest_cli("--url", server.url, "--ramp", "--clients", "1",
                        "--max-clients", "2", "--step-seconds", "0.5", "--pause", "0.2",
                        "--fps", "10", "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = result["steps"]
    assert [s["clients"] for s in steps][:1] == [1] and len(steps) >= 1
    assert all(s["sent"] == s["answered"] for s in steps)
    step_lines = [line for line in proc.stderr.splitlines() if " clients  p50 " in line]
    assert len(step_lines) == len(steps)  # every step's figures printed (stderr with --json)
    assert result["best_clients"] in (0, 1, 2)
    passing = [s["clients"] for s in steps if s["step_passed"]]
    assert result["best_clients"] == max(passing, default=0)


def test_wss_with_a_self_signed_certificate(tiny_model_path: Path, tmp_path: Path) -> None:
    with running_server(tiny_model_path, ("--device", "cpu", "--https"),
                        log_path=tmp_path / "server.log") as server:
        assert server.url.startswith("wss://")
        refused = loadtest_cli("--url", server.url, "--clients", "1", "--seconds", "0.3",
                               "--json")
        accepted = loadtest_cli("--url", server.url, "--clients", "1", "--seconds", "1",
                                "--fps", "10", "--insecure", "--json", *LENIENT)
    s = json.loads(refused.stdout)
    assert refused.returncode == 1 and s["connected"] == 0
    assert "pass --insecure" in next(iter(s["errors_by_reason"]))
    s = json.loads(accepted.stdout)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert s["sent"] == s["answered"] == s["ok"] > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_server_stopping_mid_run_fails_the_run(tiny_model_path: Path, tmp_path: Path,
                                                 sig: signal.Signals) -> None:
    """Shut down gracefully (the closing notice) or killed: the run cannot pass."""
    with running_server(tiny_model_path, ("--device", "cpu"),
                        log_path=tmp_path / "server.log") as server:
        proc = subprocess.Popen([sys.executable, "-m", "streamfer.loadtest", "--url",
                                 server.url, "--clients", "2", "--fps", "15", "--seconds", "8",
                                 "--grace", "1", *LENIENT], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        metrics = server.url.replace("ws://", "http://").replace("/ws", "/metrics")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:  # both streaming a while
            with urllib.request.urlopen(metrics, timeout=5) as r:
                if "streamfer_connections 2.0" in r.read().decode():
                    break
            time.sleep(0.2)
        time.sleep(1)
        server.proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "PASSED" not in out
    assert "FAILED: " in out and "the server closed 2 of 2 connections before the run's end" in out
    assert ("with its shutdown notice" if sig == signal.SIGTERM else "without notice") in out
    assert "(server closed)" in out
