"""POST /api/video: a recording uploaded, checked, then analysed as a job with progress.

The upload streams to a temporary file (never into memory) under --max-video-bytes and
--video-upload-s; the file is then checked (container, codec, frame size, duration) on a
thread before the reply, so a bad video is refused at once and a good one becomes a job.
Jobs run one at a time on their own thread (never the event loop, never the decode threads
live frames use), through the server's face detector and the live path's micro-batcher, in
small chunks so live frames keep their place in its queue. At most --video-jobs are held
at once; a finished job's files are deleted --video-keep-s after it ended, at DELETE, or at
shutdown. Routes and replies: docs/PROTOCOL.md, "/api/video".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import BodyPartReader, web

from streamfer.optional import OpenCVMissing, has_opencv
from streamfer.protocol import ERROR, OVERLOADED
from streamfer.server.batcher import Ran
from streamfer.smooth import SMOOTH_MS
from streamfer.video.analyse import Cancelled
from streamfer.video.decode import (
    NOT_A_VIDEO,
    NOT_INSTALLED,
    TOO_LARGE,
    Limits,
    VideoError,
    VideoInfo,
    open_video,
)
from streamfer.video.run import expected_frames, process
from streamfer.video.timeline import CSV_NAME, JSON_NAME, SUMMARY_NAME

if TYPE_CHECKING:
    from streamfer.server.app import ServerState

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_EVERY = 1000
SWEEP_S = 5.0  # how often expired jobs are looked for
RETRY_S = 0.02  # a chunk refused by a full queue waits this long before it is resubmitted
STATES = ("uploading", "queued", "running", "done", "error")
CONTENT_TYPES = {".csv": "text/csv", ".json": "application/json", ".png": "image/png"}


@dataclass
class Job:
    id: str
    folder: Path
    every: int
    smooth_ms: float
    state: str = "uploading"
    info: VideoInfo | None = None
    total: int = 0
    done: int = 0
    error: dict[str, str] | None = None
    summary: dict[str, Any] | None = None
    ended: float | None = None  # time.monotonic() when done or failed
    cancelled: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def video_path(self) -> Path:
        return self.folder / "upload"

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"

    def status(self, keep_s: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job": self.id, "status": self.state, "every": self.every,
            "frames_done": self.done, "frames_total": self.total,
            "progress": 1.0 if self.state == "done" else
            round(min(self.done / self.total, 0.999), 4) if self.total else 0.0}
        if self.info is not None:
            body["video"] = self.info.to_json()
        if self.error is not None:
            body.update(self.error)
        if self.summary is not None:
            body["summary"] = self.summary
            body["files"] = {name: f"/api/video/{self.id}/{name}" for name in self.files}
        if self.ended is not None:
            body["expires_in_s"] = round(max(0.0, self.ended + keep_s - time.monotonic()), 1)
        return body


class VideoJobs:
    """The server's video jobs: at most `config.video_jobs` held, run one at a time."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.config = state.config
        self.jobs: dict[str, Job] = {}
        self.root: Path | None = None
        self.runner: ThreadPoolExecutor | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    @property
    def limits(self) -> Limits:
        c = self.config
        return Limits(c.max_video_bytes, c.max_video_seconds, c.max_video_pixels)

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        self.runner = ThreadPoolExecutor(1, thread_name_prefix="streamfer-video")
        sweeper = loop.create_task(self._sweep(), name="video-expiry")
        yield
        sweeper.cancel()
        for job in self.jobs.values():
            job.cancelled = True
        await loop.run_in_executor(None, self.runner.shutdown, True)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.root is not None:
            await _rmtree(self.root)
        self.jobs.clear()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for job in [j for j in self.jobs.values()
                        if j.ended is not None and now - j.ended > self.config.video_keep_s]:
                await self.remove(job)

    async def remove(self, job: Job) -> None:
        """Forget the job and delete its files (a queued or running one's when it stops)."""
        job.cancelled = True
        self.jobs.pop(job.id, None)
        if job.state not in ("queued", "running"):
            await _rmtree(job.folder)

    def _run(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        """On the job thread: decode, detect, crop here; faces through the batcher."""
        pipeline = self.state.pipeline
        assert pipeline is not None
        chunk = max(1, min(self.config.max_batch, self.config.queue_limit // 4))

        def infer(faces: np.ndarray) -> Future[np.ndarray]:
            return asyncio.run_coroutine_threadsafe(_classify(pipeline.batcher, faces), loop)

        def on_frame(_index: int) -> None:
            job.done += 1

        if job.cancelled or self.state.closing:
            raise Cancelled("stopped before it started")
        cap, info = open_video(job.video_path, self.limits)
        job.state = "running"
        job.summary = process(cap, info, job.out_dir, detector=pipeline.detector,
                              classes=pipeline.classes, input_size=pipeline.input_size,
                              infer=infer, every=job.every, limits=self.limits,
                              smooth_ms=job.smooth_ms, model=self.state.predictor.name,
                              batch=chunk, in_flight=1, on_frame=on_frame,
                              cancelled=lambda: job.cancelled or self.state.closing)
        job.files = [CSV_NAME, JSON_NAME, SUMMARY_NAME, *job.summary["plots"].values()]
        job.video_path.unlink(missing_ok=True)  # the results are what is kept

    def submit(self, job: Job) -> None:
        """Queue the job on the job thread."""
        task = asyncio.get_running_loop().create_task(self._start(job), name=f"video-{job.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        assert self.runner is not None
        job.state = "queued"
        try:
            await loop.run_in_executor(self.runner, self._run, job, loop)
            job.state = "done"
        except Cancelled:
            job.state, job.error = "error", {"code": "cancelled",
                                             "error": "the job was stopped"}
        except VideoError as exc:
            job.state, job.error = "error", {"code": exc.code, "error": str(exc)}
        except Exception as exc:
            log.exception("video job %s failed", job.id)
            job.state, job.error = "error", {"code": "internal",
                                             "error": f"the video job failed: {exc}"}
        finally:
            job.ended = time.monotonic()
            if job.id not in self.jobs:  # deleted while it ran
                await _rmtree(job.folder)
            else:
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(None, job.video_path.unlink, True)


async def _rmtree(path: Path) -> None:
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: shutil.rmtree(path, ignore_errors=True))


async def _classify(batcher: Any, faces: np.ndarray) -> np.ndarray:
    """A chunk of faces through the micro-batcher, resubmitting those a full queue refused
    (a video job yields to live frames rather than failing)."""
    out: list[np.ndarray | None] = [None] * len(faces)
    waiting = list(range(len(faces)))
    while waiting:
        ran = await asyncio.gather(*(batcher.submit(faces[i]) for i in waiting))
        again = []
        for i, r in zip(waiting, ran, strict=True):
            if isinstance(r, Ran):
                out[i] = r.value
            elif r.reason == OVERLOADED:
                again.append(i)
            else:
                raise Cancelled(f"inference refused: {r.reason}")
        if again:
            await asyncio.sleep(RETRY_S)
        waiting = again
    return np.stack([o for o in out if o is not None])


VIDEO_JOBS = web.AppKey("video_jobs", VideoJobs)


def add_routes(app: web.Application, state: ServerState) -> None:
    """/api/video and /api/video/JOB[/FILE], with the jobs' lifetime on the app's."""
    jobs = VideoJobs(state)
    app[VIDEO_JOBS] = jobs
    app.cleanup_ctx.append(jobs.lifetime)
    app.router.add_post("/api/video", upload)
    app.router.add_get("/api/video/{job}", job_status)
    app.router.add_delete("/api/video/{job}", delete)
    app.router.add_get("/api/video/{job}/{name}", job_file)


def _refuse(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"status": ERROR, "code": code, "error": message},
                             status=status, headers=headers or None)


def _query_number(request: web.Request, name: str, default: float, low: float,
                  high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ValueError(f"?{name}= must be a number from {low:g} to {high:g}")
    return value


async def _receive(request: web.Request, path: Path, limit: int) -> None:
    """The body (raw, or the multipart field `video`) into `path`, at most `limit` bytes."""
    loop = asyncio.get_running_loop()
    too_large = VideoError(f"video exceeds the upload limit of {limit} bytes "
                           "(--max-video-bytes, STREAMFER_MAX_VIDEO_BYTES)", TOO_LARGE)
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and not (isinstance(part, BodyPartReader) and
                                        part.name == "video"):
            if isinstance(part, BodyPartReader):
                while await part.read_chunk(CHUNK):
                    if request.content.total_bytes > limit + 64 * 1024:
                        raise too_large
            part = await reader.next()
        if part is None:
            raise VideoError("multipart body has no field named 'video'", NOT_A_VIDEO)
        read = part.read_chunk
    else:
        read = request.content.read
    size = 0
    with path.open("wb") as f:
        buffer = bytearray()
        while chunk := await read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large
            buffer += chunk
            if len(buffer) >= 4 * CHUNK:  # the disk write off the loop
                await loop.run_in_executor(None, f.write, bytes(buffer))
                buffer.clear()
        await loop.run_in_executor(None, f.write, bytes(buffer))
    if size == 0:
        raise VideoError("empty body: POST a video file (or the multipart field 'video')",
                         NOT_A_VIDEO)


async def upload(request: web.Request) -> web.Response:
    jobs = request.app[VIDEO_JOBS]
    config = jobs.config
    if jobs.state.closing or jobs.runner is None:
        return _refuse(503, "shutting_down", "server shutting down")
    limit = config.max_video_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        resp = _refuse(413, TOO_LARGE, f"request body of {request.content_length} bytes "
                       f"exceeds the upload limit of {limit} bytes (--max-video-bytes)")
        resp.force_close()
        return resp
    if not has_opencv():  # refused before the upload is read
        resp = _refuse(501, NOT_INSTALLED, str(OpenCVMissing("/api/video")))
        resp.force_close()
        return resp
    if len(jobs.jobs) >= config.video_jobs:
        resp = _refuse(503, "busy", f"{config.video_jobs} video jobs are held already "
                       "(--video-jobs); try again when one has been fetched or expired",
                       **{"Retry-After": "10"})
        resp.force_close()
        return resp
    try:
        every = int(_query_number(request, "every", 1, 1, MAX_EVERY))
        smooth_ms = _query_number(request, "smooth_ms", SMOOTH_MS, 0, 60_000)
    except ValueError as exc:
        resp = _refuse(400, "bad_query", str(exc))
        resp.force_close()
        return resp
    loop = asyncio.get_running_loop()
    if jobs.root is None:  # made at the first upload: a server that takes no video makes none
        root = Path(await loop.run_in_executor(
            None, lambda: tempfile.mkdtemp(prefix="streamfer-video-")))
        if jobs.root is None:
            jobs.root = root
        else:  # another upload made one meanwhile
            await loop.run_in_executor(None, root.rmdir)
    job = Job(secrets.token_urlsafe(12), jobs.root / secrets.token_hex(8), every, smooth_ms)
    jobs.jobs[job.id] = job  # the slot is held from here, so parallel uploads cannot overfill
    try:
        await loop.run_in_executor(None, job.folder.mkdir)
        async with asyncio.timeout(config.video_upload_s):
            await _receive(request, job.video_path, limit)
        cap, info = await loop.run_in_executor(None, open_video, job.video_path, jobs.limits)
        cap.release()
    except VideoError as exc:
        await jobs.remove(job)
        resp = _refuse(413 if exc.code == TOO_LARGE else 400, exc.code, str(exc))
        if not request.content.is_eof():
            resp.force_close()
        return resp
    except TimeoutError:
        await jobs.remove(job)
        resp = _refuse(408, "timeout", f"upload not complete within {config.video_upload_s:g}"
                       " s (--video-upload-s)")
        resp.force_close()
        return resp
    except (ValueError, ConnectionError, OSError) as exc:
        await jobs.remove(job)
        log.info("video upload from %s failed: %s", request.remote, exc)
        resp = _refuse(400, "bad_upload", f"the upload could not be read: {exc}")
        resp.force_close()
        return resp
    except BaseException:
        await jobs.remove(job)
        raise
    job.info, job.total = info, expected_frames(info, every, jobs.limits)
    job.state = "queued"
    jobs.submit(job)
    return web.json_response({**job.status(config.video_keep_s),
                              "url": f"/api/video/{job.id}"}, status=202,
                             headers={"Location": f"/api/video/{job.id}"})


def _job(request: web.Request) -> Job:
    job = request.app[VIDEO_JOBS].jobs.get(request.match_info["job"])
    if job is None:
        raise web.HTTPNotFound(text="no such video job (finished jobs expire: "
                                    "--video-keep-s)\n")
    return job


async def job_status(request: web.Request) -> web.Response:
    return web.json_response(_job(request).status(request.app[VIDEO_JOBS].config.video_keep_s))


async def job_file(request: web.Request) -> web.StreamResponse:
    job = _job(request)
    name = request.match_info["name"]
    if job.state != "done" or name not in job.files:  # a fixed list: no path from the URL
        raise web.HTTPNotFound(text=f"no file {name!r} in this job (see its 'files')\n")
    path = job.out_dir / name
    return web.FileResponse(path, headers={
        "Content-Type": CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
        "Content-Disposition": f'attachment; filename="{job.id}-{name}"'})


async def delete(request: web.Request) -> web.Response:
    job = _job(request)
    await request.app[VIDEO_JOBS].remove(job)
    return web.Response(status=204)
