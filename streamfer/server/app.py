"""The aiohttp application: routes, the WebSocket endpoint, the HTTP API, lifecycle.

`init_app(config)` builds it (aiohttp-demos style): typed state under one `web.AppKey`,
routes in `setup_routes`, the decode pool and the micro-batcher started and stopped by a
cleanup context, and `on_shutdown` answering in-flight frames before closing sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from streamfer import protocol
from streamfer.detect import NO_HAAR, BlazeFace, HaarFallback, load_detector
from streamfer.faces import BLAZEFACE, FRAMING, HAAR
from streamfer.model import Predictor
from streamfer.server import guard, vendor, video
from streamfer.server.batcher import Stage, batcher_for, inference_stage, load_predictor
from streamfer.server.config import ServeConfig
from streamfer.server.decoder import DecodePool
from streamfer.server.inference_worker import ModelInfo, WorkerClient
from streamfer.server.metrics import Metrics
from streamfer.server.photos import PhotoPipeline
from streamfer.server.pipeline import DetectBatcher, FramePipeline
from streamfer.server.stream import FrameStream, Timeouts, deadline

log = logging.getLogger(__name__)



@dataclass
class ServerState:
    config: ServeConfig
    predictor: Predictor | ModelInfo  # ModelInfo: the model is the inference worker's
    metrics: Metrics = field(default_factory=Metrics)
    streams: set[FrameStream] = field(default_factory=set)
    pending_upgrades: int = 0
    uploads: int = 0  # /api/predict requests admitted and not yet answered
    # This machine's names for the Host check, looked up once (DNS), not by a request.
    own_names: frozenset[str] = field(default_factory=guard.own_names)
    closing: bool = False
    pipeline: FramePipeline | None = None  # set while the app runs (see _resources)
    photos: PhotoPipeline | None = None  # /api/predict's, over the pipeline's stages
    page_detector: vendor.VendorPackage | None = None  # the in-page detector's files, if installed
    worker: WorkerClient | None = None  # --inference-worker: the model runs there

    def hello(self) -> dict[str, Any]:
        c, p = self.config, self.predictor
        suggested = min(c.suggested_fps, c.max_fps) if c.max_fps > 0 else c.suggested_fps
        return protocol.hello(model=p.name, classes=p.classes, input_size=p.input_size,
                              tta=p.tta, max_frame_bytes=c.max_frame_bytes, max_fps=c.max_fps,
                              suggested_fps=suggested, window=protocol.WINDOW,
                              framing={name: dict(f) for name, f in FRAMING.items()},
                              page_detector=self.page_detector.greeting()
                              if self.page_detector else None)


STATE = web.AppKey("state", ServerState)


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...] = ()) -> bool:
    """Browsers send Origin on every WebSocket handshake; a page from another site must not
    drive this server with its visitor's camera. Allowed: no Origin at all (not a browser,
    e.g. the load test), an Origin in `allowed` ('*' = any), or one naming the same host and
    port as the request's Host header. The Origin's own scheme fills in a missing port, so a
    page served over https by a TLS-terminating proxy (which forwards plain http) passes.
    """
    if origin is None:
        return True
    normal = origin.strip().lower().rstrip("/")
    allowed_set = {a.strip().lower().rstrip("/") for a in allowed}
    if "*" in allowed_set or normal in allowed_set:
        return True
    if not host:
        return False
    try:
        o = urlsplit(normal)
        h = urlsplit("//" + host.strip().lower())
        if o.scheme not in ("http", "https") or not o.hostname:
            return False
        default = 443 if o.scheme == "https" else 80
        return o.hostname == h.hostname and (o.port or default) == (h.port or default)
    except ValueError:  # a malformed port
        return False


def init_app(config: ServeConfig, predictor: Predictor | None = None, *,
             worker: WorkerClient | None = None) -> web.Application:
    """The app for `config`; pass `predictor` to share one loaded model between apps, or
    `worker` (ready: streamfer.server.inference_worker) to leave inference to that worker."""
    if worker is not None:
        assert worker.model is not None, "wait_ready() first"
        predictor = worker.model
    elif predictor is None:
        predictor = load_predictor(config)
    app = web.Application(client_max_size=config.max_request_bytes, middlewares=[checked])
    app[STATE] = ServerState(config=config, predictor=predictor,
                             page_detector=vendor.find(config.web_dir, config.page_inference),
                             worker=worker)
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(close_streams)
    app.on_response_prepare.append(_write_deadline)
    setup_routes(app)
    return app


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_post("/api/predict", predict)
    app.router.add_get("/api/predict", post_only)  # else the static route below says 404
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    video.add_routes(app, app[STATE])  # /api/video: recordings to timelines, as jobs
    web_dir = app[STATE].config.web_dir
    if app[STATE].page_detector is not None:  # /vendor/...: that npm package's files only
        vendor.add_routes(app, app[STATE].page_detector)
    if web_dir.is_dir():  # the page's scripts and styles, after the routes above (and never
        app.router.add_static("/", web_dir, name="web")  # node_modules: see `checked`)


@web.middleware
async def checked(request: web.Request, handler: Any) -> web.StreamResponse:
    """streamfer.server.guard's checks, before any route: the Host (DNS rebinding; a
    request a proxy forwarded was routed by the proxy's own names, e.g. nginx's
    server_name, and is answered), the normalised path (node_modules only through
    /vendor/)."""
    state = request.app[STATE]
    config = state.config
    if not _proxied(request) and not guard.host_allowed(
            request.headers.get("Host"), config.allow_host, config.allow_origin,
            state.own_names):
        log.info("refused a request for host %r from %s (see --allow-host)",
                 request.headers.get("Host", "")[:100], request.remote)
        raise web.HTTPForbidden(text="this server does not answer to that host name "
                                     "(see --allow-host)\n")
    if guard.path_hidden(request.raw_path):
        raise web.HTTPNotFound()
    return await handler(request)


async def _resources(app: web.Application) -> Any:
    """Decode processes + face-search threads + warmed-up model + micro-batcher for the
    app's lifetime."""
    state = app[STATE]
    config, predictor = state.config, state.predictor
    loop = asyncio.get_running_loop()
    decoder = DecodePool(config.workers, face_size=predictor.input_size)
    await loop.run_in_executor(None, decoder.start)
    try:
        pool = ThreadPoolExecutor(config.workers, thread_name_prefix="streamfer-detect")
        batcher: Stage
        if state.worker is not None:  # the worker's batcher (warmed up there) serves this one
            batcher, device = state.worker, "cpu"
        else:
            assert isinstance(predictor, Predictor)
            _, batcher = inference_stage(config, state.metrics, predictor)
            device = predictor.device
            await loop.run_in_executor(None, predictor.warm_up, config.max_batch)
        state.metrics.track_queue(lambda: len(batcher))
        batcher.start()
        detector = await loop.run_in_executor(None, make_detector, config, device)
        detect_batcher: DetectBatcher | None = None
        if isinstance(detector, BlazeFace) and (config.detect_batch if config.detect_batch
                                                is not None else detector.device == "cuda"):
            # The batched stage before the expression model (same batching policy).
            detect_batcher = batcher_for(
                config, lambda xs: list(zip(*detector.infer(np.stack(xs)), strict=True)))
            detect_batcher.start()
        log.info("face detector: %s%s", detector.description,
                 ", batched" if detect_batcher is not None else ", in the face-search threads")
        state.pipeline = FramePipeline(
            batcher=batcher, classes=predictor.classes, input_size=predictor.input_size,
            decoder=decoder, decode_pool=pool, detector=detector,
            deadline_s=config.deadline_ms / 1000.0, detect_batcher=detect_batcher)
        state.photos = PhotoPipeline(state.pipeline, config.photo_deadline_ms / 1e3)
        yield
        if detect_batcher is not None:
            await detect_batcher.stop()
        await batcher.stop()  # runs whatever is still queued
        await loop.run_in_executor(None, pool.shutdown)
    finally:
        await loop.run_in_executor(None, decoder.close)  # kills any decode still running


def make_detector(config: ServeConfig, device: Any) -> BlazeFace | HaarFallback:
    """The face detector --detector names; BlazeFace runs on the model's device."""
    if config.detector == HAAR:
        detector: BlazeFace | HaarFallback = HaarFallback()
    elif config.detector == BLAZEFACE:  # asked for by name: missing weights are an error
        detector = BlazeFace(device=device)
    else:
        detector = load_detector(device)
    if not getattr(detector, "available", True):
        log.warning("%s; full frames will get a no_detector error", NO_HAAR)
    return detector


async def close_streams(app: web.Application) -> None:
    """Graceful shutdown of the WebSockets, within config.shutdown_timeout_s: frames in
    flight are answered, frames read meanwhile get dropped/shutting_down, then each socket
    closes with 1001 (going away); a socket still open at the deadline is cut.

    streamfer.server.serve runs this before aiohttp's own shutdown, whose first step stops reading
    every connection (frames arriving then would get no reply); as an on_shutdown hook it
    also covers apps run by other runners (tests), and does nothing the second time."""
    state = app[STATE]
    state.closing = True
    streams = list(state.streams)
    if not streams:
        return
    timeout = state.config.shutdown_timeout_s
    loop = asyncio.get_running_loop()
    tasks = {loop.create_task(s.shut_down(timeout)): s for s in streams}
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:  # e.g. its close frame waits on a client that does not read
        tasks[task].cut(f"not closed {timeout:g} s into shutdown")
        task.cancel()
    await asyncio.wait(tasks)


async def _write_deadline(request: web.Request, response: web.StreamResponse) -> None:
    """HTTP's write timeout, set on the socket before each response: the kernel drops a
    connection whose sent data stays unacknowledged (a client not reading: zero window) for
    --write-timeout-s (Linux TCP_USER_TIMEOUT). It covers what no coroutine can time, e.g. a
    static file sent with sendfile to a client that never reads it."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT") and \
            sock.family in (socket.AF_INET, socket.AF_INET6):
        ms = int(request.app[STATE].config.write_timeout_s * 1000)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)


async def index(request: web.Request) -> web.StreamResponse:
    page = request.app[STATE].config.web_dir / "index.html"
    if not page.is_file():
        return web.Response(status=404, text=f"The phone page is not installed ({page} is "
                                             "missing); the API is at /ws and /api/predict.\n")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    if not origin_allowed(request.headers.get("Origin"), request.host, config.allow_origin):
        log.warning("refused a WebSocket from origin %s", request.headers.get("Origin"))
        raise web.HTTPForbidden(text="WebSocket origin not allowed (see --allow-origin)\n")
    if state.closing:
        raise web.HTTPServiceUnavailable(text="server shutting down\n")
    if len(state.streams) + state.pending_upgrades >= config.max_connections:
        raise web.HTTPServiceUnavailable(
            text=f"server full: {config.max_connections} connections\n",
            headers={"Retry-After": "5"})
    assert state.pipeline is not None
    # heartbeat and pings are FrameStream's own (see there); `timeout` bounds waiting for the
    # client's close reply.
    ws = web.WebSocketResponse(max_msg_size=config.max_message_bytes, heartbeat=None,
                               autoping=False, timeout=config.write_timeout_s)
    state.pending_upgrades += 1  # counted from here so simultaneous handshakes cannot overfill
    try:
        await ws.prepare(request)
    except ConnectionError as exc:  # the client left mid-handshake: one line, no traceback
        log.info("client %s left during its WebSocket handshake (%s)", request.remote, exc)
        return web.Response(status=400)  # nobody reads it; aiohttp drops it quietly
    finally:
        state.pending_upgrades -= 1
    stream = FrameStream(ws, state.pipeline, state.metrics,
                         max_frame_bytes=config.max_frame_bytes, max_fps=config.max_fps,
                         timeouts=Timeouts(read=config.read_timeout_s,
                                           write=config.write_timeout_s,
                                           heartbeat=config.heartbeat_s),
                         transport=request.transport)
    state.streams.add(stream)
    state.metrics.connections.inc()
    try:
        if await stream.send_hello(state.hello()):
            await stream.serve()
    finally:
        state.streams.discard(stream)
        state.metrics.connections.dec()
    return ws


MAX_PARTS = 16  # multipart parts read from an upload, the 'image' field among them


class _BadRequest(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"])
        self.status = status
        self.body = body


async def _read_image(request: web.Request, limit: int, max_body: int) -> bytes:
    """The posted image: the raw body, or the multipart field `image`. Other multipart parts
    are read and discarded, but the whole body may not exceed `max_body` bytes."""
    too_large = _BadRequest(413, protocol.error(
        f"image exceeds the upload limit of {limit} bytes (--max-upload-bytes, "
        "STREAMFER_MAX_UPLOAD_BYTES)", protocol.TOO_LARGE))
    if request.content_length is not None and request.content_length > max_body:
        raise _BadRequest(413, protocol.error(
            f"request body of {request.content_length} bytes exceeds {max_body} (the upload "
            f"limit, --max-upload-bytes {limit}, plus room for form fields)",
            protocol.TOO_LARGE))
    if request.content_type.startswith("multipart/"):
        try:
            return await _read_multipart(request, limit, max_body, too_large)
        except (ValueError, RuntimeError, TypeError, HttpProcessingError) as exc:
            # aiohttp's parser: no boundary, no opening boundary, bad part headers, ...
            raise _BadRequest(400, protocol.error(
                f"malformed multipart body ({str(exc)[:200]}): POST the image as the "
                "form field 'image' (curl -F image=@face.jpg)", protocol.BAD_IMAGE)) from None
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(data) > limit:
        raise too_large
    if not data:
        raise _BadRequest(400, protocol.error(
            "empty body: POST a JPEG/PNG image (or multipart field 'image')",
            protocol.BAD_IMAGE))
    return data


async def _read_multipart(request: web.Request, limit: int, max_body: int,
                          too_large: _BadRequest) -> bytes:
    """The `image` field, reading at most MAX_PARTS parts and yielding to the event loop
    after each: a body of many tiny parts (each costs a header parse) cannot hold the loop."""
    reader = await request.multipart()
    parts = 0
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            raise ValueError("nested multipart parts are not supported")
        parts += 1
        if parts > MAX_PARTS:
            raise _BadRequest(400, protocol.error(
                f"multipart body has more than {MAX_PARTS} parts before its 'image' field: "
                "POST the image as the form field 'image' (curl -F image=@face.jpg)",
                protocol.BAD_IMAGE))
        await asyncio.sleep(0)  # one part per turn of the event loop
        if part.name != "image":  # read and discarded, within the body's limit
            while await part.read_chunk(64 * 1024):
                if request.content.total_bytes > max_body:
                    raise _BadRequest(413, protocol.error(
                        f"multipart body exceeds {max_body} bytes before its 'image' field",
                        protocol.TOO_LARGE))
            continue
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            data += chunk
            if len(data) > limit:
                raise too_large
        return bytes(data)
    raise _BadRequest(400, protocol.error(
        "multipart body has no field named 'image'", protocol.BAD_IMAGE))


async def predict(request: web.Request) -> web.Response:
    """One photo over HTTP, answered with the same body as a streamed frame (no id), plus
    `faces`: every face found, largest first (the single-face fields are the largest)."""
    state = request.app[STATE]
    config = state.config
    state.metrics.frames_in.labels("http").inc()
    is_crop = request.query.get("crop", "0").lower() in ("1", "true", "yes")
    state.metrics.observe_kind(is_crop)
    if state.uploads >= config.max_uploads:  # before a byte of the body is read
        body = protocol.dropped(protocol.OVERLOADED)
        state.metrics.observe_reply(body)
        resp = web.json_response({"type": "result", **body,
                                  "error": f"{config.max_uploads} uploads in progress "
                                           "(--max-uploads): try again shortly"},
                                 status=503, headers={"Retry-After": "1"})
        resp.force_close()  # its body is not read
        return resp
    state.uploads += 1
    try:
        return await _predict(request, state, is_crop)
    finally:
        state.uploads -= 1


async def _predict(request: web.Request, state: ServerState, is_crop: bool) -> web.Response:
    config = state.config
    try:
        async with deadline(config.read_timeout_s):  # a trickled body is cut off
            data = await _read_image(request, config.max_upload_bytes, config.max_request_bytes)
    except _BadRequest as exc:
        state.metrics.observe_reply(exc.body)
        resp = web.json_response({"type": "result", **exc.body}, status=exc.status)
        if not request.content.is_eof():
            resp.force_close()  # refused mid-body: do not read the rest
        return resp
    except asyncio.TimeoutError:
        body = protocol.error(f"request body not received within {config.read_timeout_s:g} s",
                              protocol.BAD_MESSAGE)
        state.metrics.observe_reply(body)
        resp = web.json_response({"type": "result", **body}, status=408)
        resp.force_close()  # the rest of the body is not worth reading
        return resp
    except ConnectionError as exc:  # the client left mid-upload: one line, no traceback
        log.info("client %s left during its upload (%s)", request.remote, exc)
        return web.Response(status=400)  # nobody reads it; aiohttp drops it quietly
    if state.closing:
        body = protocol.dropped(protocol.SHUTTING_DOWN)
    else:
        assert state.photos is not None
        # The photo's own deadline, counted from its whole body: its upload time is the
        # client's network, not the server's queue.
        body = await state.photos.run(data, is_crop=is_crop, received=time.monotonic())
    state.metrics.observe_reply(body)
    status, headers = 200, {}
    if body["status"] == protocol.ERROR:
        status = {protocol.TOO_LARGE: 413, protocol.INTERNAL: 500,
                  protocol.NO_DETECTOR: 501}.get(body["code"], 400)
    elif body["status"] == protocol.DROPPED:
        status, headers = 503, {"Retry-After": "1"}
    return web.json_response({"type": "result", **body}, status=status, headers=headers)


async def post_only(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, ["POST"],
                                   text="POST an image to /api/predict (docs/PROTOCOL.md)\n")


def _proxied(request: web.Request) -> bool:
    """Whether a proxy says it forwarded this request (X-Forwarded-For, Forwarded)."""
    return "X-Forwarded-For" in request.headers or "Forwarded" in request.headers


def _internals_allowed(request: web.Request) -> bool:
    """A client within --metrics-from, talking to this server directly: a request a proxy
    forwarded (X-Forwarded-For, Forwarded) comes from the proxy's address, so it counts as
    from outside (a client adding the header itself only loses its own access)."""
    return not _proxied(request) and guard.remote_allowed(request.remote,
                                                request.app[STATE].config.metrics_from)


async def healthz(request: web.Request) -> web.Response:
    """The status for anyone (a load balancer's probe); the details (model, pid, connection
    count, ...) only for the networks of --metrics-from."""
    state = request.app[STATE]
    p = state.predictor
    down = state.worker is not None and not state.worker.alive
    status = "shutting_down" if state.closing else "inference_worker_down" if down else "ok"
    code = 503 if state.closing or down else 200
    if not _internals_allowed(request):
        return web.json_response({"status": status}, status=code)
    return web.json_response(
        {"status": status,
         **({"error": state.worker.why_not} if down and state.worker is not None else {}),
         "model": p.name,
         "device": str(p.device), "runtime": p.runtime, "classes": p.classes, "tta": p.tta,
         "face_detection": state.pipeline is not None and
         getattr(state.pipeline.detector, "available", True),
         "face_detector": state.pipeline.detector.description if state.pipeline else None,
         "connections": len(state.streams), "pid": os.getpid(),
         **({"inference_worker": state.worker.model.pid} if state.worker is not None and
            state.worker.model is not None else {})},
        status=code)


async def metrics(request: web.Request) -> web.Response:
    if not _internals_allowed(request):
        raise web.HTTPForbidden(text="/metrics is open to the networks of --metrics-from "
                                     "only\n")
    return web.Response(body=request.app[STATE].metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
