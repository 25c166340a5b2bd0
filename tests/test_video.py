"""Recorded video to a timeline: the command line and the server's /api/video on real
encoded videos (OpenCV's FFmpeg writer), the real server on 127.0.0.1, real models and the
real face detector; bad videos refused with their codes; the smoothing maths shared with the
page; the tracker's ids."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from streamfer.detect import SPECS, WEIGHTS_DIR
from streamfer.faces import Box
from streamfer.model import Predictor
from streamfer.server.app import init_app
from streamfer.server.video import VIDEO_JOBS
from streamfer.smooth import ProbabilityEma, smooth_series
from streamfer.track import IouTracker
from streamfer.video import cli as video_cli
from streamfer.video.timeline import columns
from tests.kit.fakevideo import write_face_video
from tests.kit.inproc import Client, bound, config

ROOT = Path(__file__).resolve().parent.parent
needs_blazeface = pytest.mark.skipif(
    not (WEIGHTS_DIR / SPECS["short"].file).is_file(),
    reason=f"BlazeFace weights not installed at {WEIGHTS_DIR} (`npm ci` in web/)")
SECONDS, FPS, EVERY = 4.0, 30.0, 3


def head(astronaut_rgb: np.ndarray) -> np.ndarray:
    return astronaut_rgb[0:340, 80:420]  # her head and shoulders, as tests/test_browser.py


@pytest.fixture(scope="module")
def face_video(astronaut_rgb: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_face_video(tmp_path_factory.mktemp("video") / "face.mp4",
                            head(astronaut_rgb), seconds=SECONDS, fps=FPS, size=(640, 360))


@pytest.fixture(scope="module")
def video_bytes(face_video: Path) -> bytes:
    return face_video.read_bytes()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def check_timeline(folder_files: dict[str, bytes], classes: list[str], frames: int) -> None:
    rows = list(csv.DictReader(folder_files["timeline.csv"].decode().splitlines()))
    assert list(rows[0]) == columns(classes)
    # One face in every processed frame: one row each, one stable id.
    assert [int(r["frame"]) for r in rows] == list(range(0, frames, EVERY))
    assert {r["face_id"] for r in rows} == {"1"}
    for r in rows:
        probs = [float(r[c]) for c in classes]
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)
        assert r["top"] == classes[int(np.argmax(probs))]
        assert float(r["time_s"]) == pytest.approx(int(r["frame"]) / FPS, abs=1e-3)
        assert int(r["w"]) > 40
    body = json.loads(folder_files["timeline.json"])
    assert body["classes"] == classes and len(body["rows"]) == len(rows)
    assert body["rows"][0]["box"] == [int(rows[0][k]) for k in "xywh"]
    summary = json.loads(folder_files["summary.json"])
    (face,) = summary["faces"]
    assert face["face_id"] == 1 and face["frames"] == len(rows)
    assert sum(face["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert summary["frames_processed"] == len(rows)
    png = cv2.imdecode(np.frombuffer(folder_files["face-1.png"], np.uint8), cv2.IMREAD_COLOR)
    assert png is not None and png.shape[1] > 400


def folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


@needs_blazeface
def test_the_command_line_writes_rows_plot_and_summary(face_video: Path, tiny_model_path: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert video_cli.main([str(face_video), "--every", str(EVERY), "--out", str(out),
                           "--model", str(tiny_model_path), "--device", "cpu",
                           "--no-progress"]) == 0
    check_timeline(folder(out), ["anger", "happiness", "sadness", "surprise", "neutral"],
                   round(SECONDS * FPS))


def test_the_command_line_refuses_what_is_not_a_video(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "photo.mp4"
    cv2.imwrite(str(tmp_path / "p.jpg"), np.full((64, 64), 128, np.uint8))
    shutil.copy(tmp_path / "p.jpg", bad)
    assert video_cli.main([str(bad), "--no-progress"]) == 2
    assert "not a video" in capsys.readouterr().err


def unsupported_codec_avi(path: Path) -> Path:
    """A real Motion-JPEG AVI whose codec tags are rewritten to one no decoder knows."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    data = path.read_bytes().replace(b"MJPG", b"QQZZ")
    path.write_bytes(data)
    return path


async def wait_done(client: Client, url: str, limit_s: float = 120.0) -> dict[str, Any]:
    seen = []
    for _ in range(int(limit_s * 10)):
        resp = await bound(client.get(url))
        status = await resp.json()
        seen.append(status["progress"])
        if status["status"] in ("done", "error"):
            assert seen == sorted(seen)  # progress only goes up
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"job not finished: {status}")


@needs_blazeface
async def test_the_server_turns_an_upload_into_a_job_with_progress_and_files(
        aiohttp_client: Any, predictor: Predictor, tiny_model_path: Path,
        video_bytes: bytes, frame_jpeg: bytes) -> None:
    client = await aiohttp_client(init_app(config(tiny_model_path), predictor))
    resp = await bound(client.post(f"/api/video?every={EVERY}", data=video_bytes))
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert job["status"] in ("queued", "running") and job["video"]["fps"] == FPS
    assert job["frames_total"] == round(SECONDS * FPS) // EVERY
    # A live frame meanwhile is answered as ever (the job runs on its own thread).
    live = await bound(client.post("/api/predict", data=frame_jpeg))
    assert live.status == 200
    status = await wait_done(client, job["url"])
    assert status["status"] == "done" and status["progress"] == 1.0, status
    files = {}
    for name, url in status["files"].items():
        got = await bound(client.get(url))
        assert got.status == 200
        files[name] = await got.read()
    check_timeline(files, predictor.classes, round(SECONDS * FPS))
    assert (await bound(client.get(job["url"] + "/../../etc/passwd"))).status == 404
    assert (await bound(client.delete(job["url"]))).status == 204
    assert (await bound(client.get(job["url"]))).status == 404


async def test_bad_videos_get_their_codes_and_the_server_goes_on(
        aiohttp_client: Any, predictor: Predictor, tiny_model_path: Path, tmp_path: Path,
        frame_jpeg: bytes, astronaut_rgb: np.ndarray) -> None:
    short = write_face_video(tmp_path / "short.mp4", head(astronaut_rgb), seconds=3.0,
                             fps=10, size=(320, 240))
    client = await aiohttp_client(init_app(config(
        tiny_model_path, max_video_seconds=2.0, max_video_bytes=2_000_000,
        max_video_pixels=640 * 480), predictor))

    async def post(data: bytes, **kw: Any) -> tuple[int, dict[str, Any]]:
        resp = await bound(client.post("/api/video", data=data, **kw))
        return resp.status, await resp.json()

    status, body = await post(frame_jpeg)
    assert (status, body["code"]) == (400, "not_a_video"), body
    status, body = await post(unsupported_codec_avi(tmp_path / "odd.avi").read_bytes())
    assert (status, body["code"]) == (400, "unsupported_codec"), body
    status, body = await post(short.read_bytes())
    assert (status, body["code"]) == (400, "too_long") and "2 s" in body["error"], body
    status, body = await post(b"\0" * 2_100_000)
    assert (status, body["code"]) == (413, "too_large") and "--max-video-bytes" in body["error"]
    big = write_face_video(tmp_path / "big.mp4", head(astronaut_rgb), seconds=0.5, fps=10,
                           size=(1280, 720))
    status, body = await post(big.read_bytes())
    assert (status, body["code"]) == (413, "too_large") and "pixels" in body["error"], body
    status, body = await post(short.read_bytes(), params={"every": "0"})
    assert (status, body["code"]) == (400, "bad_query"), body
    assert (await bound(client.get("/api/video/nope"))).status == 404
    # Nothing is held after refusals; the live path still answers.
    assert (await bound(client.post("/api/predict", data=frame_jpeg))).status == 200


@needs_blazeface
async def test_jobs_beyond_the_limit_get_503(aiohttp_client: Any, predictor: Predictor,
                                             tiny_model_path: Path, video_bytes: bytes) -> None:
    client = await aiohttp_client(init_app(config(tiny_model_path, video_jobs=1), predictor))
    first = await bound(client.post("/api/video?every=10", data=video_bytes))
    assert first.status == 202
    second = await bound(client.post("/api/video", data=video_bytes))
    assert second.status == 503 and (await second.json())["code"] == "busy"
    # DELETE frees the slot at once (a running job stops; its files go when it has).
    assert (await bound(client.delete((await first.json())["url"]))).status == 204
    third = await bound(client.post("/api/video?every=5", data=video_bytes))
    assert third.status == 202, await third.text()
    status = await wait_done(client, (await third.json())["url"])
    assert status["status"] == "done"
    jobs = client.app[VIDEO_JOBS]
    for _ in range(100):  # the stopped job's folder is deleted once its thread has let go
        if len(list(jobs.root.iterdir())) == 1:
            break
        await asyncio.sleep(0.1)
    assert len(list(jobs.root.iterdir())) == 1  # the finished job's results only
    # Shutdown with a job running: it stops, and every file the jobs made goes.
    assert (await bound(client.delete((await third.json())["url"]))).status == 204
    form = aiohttp.FormData()  # as `curl -F video=@clip.mp4` posts it
    form.add_field("note", "a field before the video is read and skipped")
    form.add_field("video", video_bytes, filename="clip.mp4", content_type="video/mp4")
    fourth = await bound(client.post("/api/video", data=form))
    assert fourth.status == 202, await fourth.text()
    root = jobs.root
    await bound(client.close())
    assert not root.exists()


def test_the_tracker_keeps_ids_and_starts_new_ones() -> None:
    tracker = IouTracker(max_missed=2)
    a, b = Box(10, 10, 50, 50), Box(200, 20, 60, 60)
    assert tracker.update([a, b]) == [1, 2]
    assert tracker.update([Box(205, 22, 60, 60), Box(14, 12, 50, 50)]) == [2, 1]
    assert tracker.update([]) == []
    assert tracker.update([Box(16, 12, 50, 50)]) == [1]  # seen again within max_missed
    for _ in range(3):
        tracker.update([])
    assert tracker.update([a]) == [3]  # gone too long: a new face


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_smoothing_matches_the_page_and_columns_match_timeline_js() -> None:
    """web/smooth.js and streamfer/smooth.py on the same series; web/timeline.js's columns."""
    rng = np.random.default_rng(0)
    classes = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
               "contempt"]
    probs = rng.dirichlet(np.ones(len(classes)), 40)
    times = np.cumsum(rng.uniform(0.02, 0.2, 40))
    script = f"""
      import {{ ProbabilityEma }} from "./web/smooth.js";
      import {{ columns }} from "./web/timeline.js";
      const classes = {json.dumps(classes)};
      const probs = {json.dumps(probs.tolist())};
      const times = {json.dumps(times.tolist())};
      const ema = new ProbabilityEma();
      const out = probs.map((p, i) => {{
        const v = ema.update(Object.fromEntries(classes.map((c, k) => [c, p[k]])),
                             times[i] * 1000);
        return classes.map((c) => v[c]);
      }});
      console.log(JSON.stringify({{ out, columns: columns(classes) }}));
    """
    ran = subprocess.run(["node", "--input-type=module", "-e", script], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(ran.stdout)
    np.testing.assert_allclose(np.array(got["out"]), smooth_series(times, probs), atol=1e-12)
    assert got["columns"] == columns(classes)
    ema = ProbabilityEma()
    assert ema.update(probs[0], 0.0) == pytest.approx(probs[0])


@pytest.mark.slow
@needs_blazeface
async def test_a_minute_of_720p_through_the_command_line_and_the_server(
        aiohttp_client: Any, astronaut_rgb: np.ndarray, tmp_path: Path) -> None:
    """The issue's case: 60 s of 720p at 30 fps, every 3rd frame, on the shipped model."""
    from streamfer.paths import DEFAULT_MODEL

    video = write_face_video(tmp_path / "minute.mp4", head(astronaut_rgb), seconds=60.0)
    out = tmp_path / "cli"
    assert video_cli.main([str(video), "--every", "3", "--out", str(out), "--device", "cpu",
                           "--no-progress"]) == 0
    cli_rows = read_csv(out / "timeline.csv")
    assert len(cli_rows) == 600 and (out / "face-1.png").is_file()
    predictor = Predictor(DEFAULT_MODEL, device="cpu")
    client = await aiohttp_client(init_app(config(DEFAULT_MODEL), predictor))
    resp = await bound(client.post("/api/video?every=3", data=video.read_bytes()))
    assert resp.status == 202
    status = await wait_done(client, (await resp.json())["url"], limit_s=600)
    assert status["status"] == "done", status
    got = await bound(client.get(status["files"]["timeline.csv"]))
    rows = list(csv.DictReader((await got.text()).splitlines()))
    assert [r["frame"] for r in rows] == [r["frame"] for r in cli_rows]
