"""`python -m streamfer.serve`: run the server until SIGINT/SIGTERM, then shut down gracefully.

Startup logs one line with the model, device, classes and the URL(s) to open on a phone.

`--processes N` runs N serving processes on one port (SO_REUSEPORT: the kernel spreads new
connections over them), so a machine's cores all run inference instead of one Python event
loop feeding one batcher. This process then only starts them, forwards SIGINT/SIGTERM, waits
for their graceful shutdown, and stops them all if one dies. Each has its own model,
batcher and torch threads (cores / N unless --threads); /metrics sums them.

`--inference-worker` adds one inference process that owns the model (and the CUDA context)
and batches the faces of all N front-ends (streamfer/server/inference_worker.py): the layout for a
GPU machine. The front-ends go first at shutdown (they need the model to answer their frames
in flight); the worker stops once they have all gone. A dead worker stops them all too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from multiprocessing import shared_memory
from multiprocessing.connection import Connection

from streamfer.imagecheck import limit_opencv

limit_opencv()  # OpenCV reads its pixel limit once, at import: set it before anything imports cv2

from aiohttp import web  # noqa: E402
from aiohttp.http_exceptions import HttpProcessingError  # noqa: E402

from streamfer.model import ModelError, check_torch  # noqa: E402
from streamfer.server import vendor  # noqa: E402
from streamfer.server.app import STATE, close_streams, init_app  # noqa: E402
from streamfer.server.config import (  # noqa: E402
    HTTP_DRAIN_S,
    HTTP_LINGER_S,
    PROG,
    ServeConfig,
    available_cores,
    parse_config,
)
from streamfer.server.connections import CappedSite  # noqa: E402
from streamfer.server.inference_worker import WorkerClient, serve_worker, shm_name  # noqa: E402
from streamfer.server.metrics import MULTIPROC_ENV  # noqa: E402
from streamfer.server.tls import (  # noqa: E402
    Certificate,
    lan_addresses,
    persistent,
    server_context,
    state_dir,
)

log = logging.getLogger("streamfer.server.serve")


class OneLineForCutClients(logging.Filter):
    """aiohttp logs a client's own failures with a traceback: a malformed request (bad
    request line, header or chunk size), a client gone mid-response, a connection the write
    deadline cut (TCP_USER_TIMEOUT, see app._write_deadline). Each is one INFO line here
    instead: hundreds of such clients must not flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
            line = ("a client stopped taking its response: cut (%s)", (exc.strerror,))
        elif isinstance(exc, HttpProcessingError):
            line = ("bad HTTP request: %s", (" ".join(str(exc.message).split())[:200],))
        elif isinstance(exc, ConnectionError):
            line = ("a client left mid-request (%s)", (exc,))
        else:
            return True
        record.msg, record.args = line
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def urls(config: ServeConfig, port: int) -> list[str]:
    """Where a browser can reach the server: LAN addresses first when bound to all."""
    scheme = "https" if config.tls else "http"
    if config.host in ("0.0.0.0", "::", ""):
        hosts = [*lan_addresses(), "localhost"]
    else:
        hosts = [config.host]
    return [f"{scheme}://{h if ':' not in h else f'[{h}]'}:{port}/" for h in hosts]


def named_hosts(config: ServeConfig) -> list[str]:
    """Hosts a self-signed certificate names besides this machine's own (--host, if one)."""
    return [] if config.host in ("0.0.0.0", "::", "") else [config.host]


def bind_note(config: ServeConfig) -> str:
    """What the listening address means, for the start line."""
    if config.host in ("0.0.0.0", "::", ""):
        return (f"listening on {config.host or '0.0.0.0'}: every interface, reachable by "
                "anyone who can reach this machine; --host 127.0.0.1 for this machine only")
    return f"listening on {config.host} only"


def tls_note(config: ServeConfig, cert: Certificate | None) -> str:
    if cert is None:
        return ""
    return (f"; self-signed certificate {'reused' if cert.reused else 'made'} "
            f"({cert.certfile.parent}), SHA-256 {cert.fingerprint}: accept it once in the "
            "browser")


@contextlib.asynccontextmanager
async def running(config: ServeConfig, *, reuse_port: bool = False,
                  worker: WorkerClient | None = None
                  ) -> AsyncIterator[tuple[web.AppRunner, list[str]]]:
    """Start the server for `config`; yields (runner, urls); shuts down gracefully on exit.
    `reuse_port`: share the port with the other processes of `--processes N`; `worker`: the
    inference worker's link (`--inference-worker`)."""
    ssl_ctx: ssl.SSLContext | None = None
    cert: Certificate | None = None
    if config.https:
        cert = persistent(state_dir(config.state_dir), hosts=named_hosts(config))
        ssl_ctx = server_context(cert.certfile, cert.keyfile)
    elif config.certfile is not None and config.keyfile is not None:
        ssl_ctx = server_context(config.certfile, config.keyfile)
    app = init_app(config, worker=worker)
    # keepalive_timeout: aiohttp closes a connection whose next request's headers are not
    # complete this long after it opened or after the previous reply (slow-loris headers).
    # lingering_time: after answering a request whose body it did not read (a refusal), how
    # long aiohttp reads and discards the rest so the client sees the answer, not a reset.
    runner = web.AppRunner(app, shutdown_timeout=HTTP_DRAIN_S, access_log=None,
                           keepalive_timeout=config.read_timeout_s,
                           lingering_time=HTTP_LINGER_S)
    await runner.setup()
    try:
        site = CappedSite(runner, config.host, config.port, limit=config.max_sockets,
                          ssl_context=ssl_ctx, handshake_s=config.tls_handshake_timeout_s,
                          reuse_port=reuse_port or None)
        await site.start()
        port = runner.addresses[0][1]
        where = urls(config, port)
        p = app[STATE].predictor
        page = app[STATE].page_detector
        pipe = app[STATE].pipeline
        log.info("streamfer: model %s on %s (%s), classes %s, tta %s, faces by %s, "
                 "serving %s (%s)%s; %s", p.name, p.device, p.runtime, ",".join(p.classes),
                 p.tta, pipe.detector.description if pipe else "?", " ".join(where),
                 bind_note(config), tls_note(config, cert),
                 f"in-page face detector {vendor.NAME} ({vendor.PACKAGE}@{page.version}, "
                 f"network on the phone's {page.inference})"
                 if page else vendor.MISSING)
        yield runner, where
    finally:
        # Stop listening, then shut the WebSockets down while their frames are still read
        # and answered; aiohttp's own shutdown then stops reading every connection.
        for site in list(runner.sites):
            await site.stop()
        await close_streams(app)
        log.debug("WebSockets closed; stopping HTTP")
        await runner.cleanup()
        log.debug("stopped")


async def serve(config: ServeConfig, *, reuse_port: bool = False,
                worker: WorkerClient | None = None) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = multiprocessing.parent_process()
    if parent is not None:  # one of --processes N: if the parent is killed, stop too
        loop.add_reader(parent.sentinel, stop.set)
    async with running(config, reuse_port=reuse_port, worker=worker):
        await stop.wait()
        log.info("shutting down: answering frames in flight, then closing sockets")


def _setup_logging(config: ServeConfig) -> None:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(OneLineForCutClients())


def _serve_one(config: ServeConfig, reuse_port: bool = False, link: Connection | None = None
               ) -> int:
    try:
        worker = None
        if link is not None:
            worker = WorkerClient(link)
            worker.wait_ready()
        asyncio.run(serve(config, reuse_port=reuse_port, worker=worker))
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    return 0


def _child(config: ServeConfig, link: Connection | None = None) -> None:
    """One of `--processes N` (a fresh interpreter: multiprocessing's spawn)."""
    _setup_logging(config)
    raise SystemExit(_serve_one(config, reuse_port=True, link=link))


def _inference_child(config: ServeConfig, links: list[Connection], names: list[str]) -> None:
    """The inference worker of `--inference-worker`."""
    _setup_logging(config)
    raise SystemExit(serve_worker(config, links, names))


def serve_processes(config: ServeConfig) -> int:
    """Run `config.processes` serving processes on one port until SIGINT/SIGTERM."""
    n = config.processes
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="streamfer-metrics-") as metrics_dir:
        os.environ[MULTIPROC_ENV] = metrics_dir  # read by prometheus-client in each child
        share = max(1, available_cores() // n)  # each process's share of the cores
        child = dataclasses.replace(
            config, processes=1, threads=config.threads or share,
            workers=share if config.workers == available_cores() else config.workers)
        cert = None
        if config.https:  # one certificate for all, made (or reused) here
            cert = persistent(state_dir(config.state_dir), hosts=named_hosts(config))
            child = dataclasses.replace(child, https=False, certfile=cert.certfile,
                                        keyfile=cert.keyfile)
        spawn = multiprocessing.get_context("spawn")
        inference, names, links = None, [], [None] * n
        if config.inference_worker:  # one pipe and one shared-memory block per front-end
            pipes = [spawn.Pipe() for _ in range(n)]
            links = [front for front, _ in pipes]
            names = [shm_name(os.getpid(), i) for i in range(n)]
            inference = spawn.Process(target=_inference_child, name="streamfer-inference",
                                      args=(config, [back for _, back in pipes], names))
            inference.start()
        procs = [spawn.Process(target=_child, args=(child, links[i]), name=f"streamfer-{i}")
                 for i in range(n)]
        for proc in procs:
            proc.start()
        for link in links:  # the children hold the ends now: a death shows as EOF there
            if link is not None:
                link.close()
        if config.inference_worker:
            for _, back in pipes:
                back.close()
        log.info("streamfer: %d processes sharing %s (pids %s), %d inference and %d decode "
                 "threads each%s%s", n, " ".join(urls(config, config.port)),
                 " ".join(str(p.pid) for p in procs),
                 0 if inference else child.threads, child.workers,
                 f"; one inference worker (pid {inference.pid}) batches for all"
                 if inference else "",
                 f" ({bind_note(config)}){tls_note(config, cert)}")
        code = 0
        while not stop.wait(0.25):
            if inference is not None and not inference.is_alive():
                code = 1
                log.error("the inference worker (pid %s) exited with code %s: stopping the "
                          "front-ends (their frames get internal errors meanwhile)",
                          inference.pid, inference.exitcode)
                break
            dead = [p for p in procs if not p.is_alive()]
            if dead:
                code = next((p.exitcode for p in dead if p.exitcode), 0) or 1
                log.error("server process %s exited with code %s: stopping the others",
                          dead[0].pid, dead[0].exitcode)
                break
        log.info("shutting down %d processes", n)
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + config.shutdown_timeout_s + 15.0
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("server process %s did not stop: killing it", proc.pid)
                proc.kill()
                proc.join(5.0)
        if inference is not None:  # it stops by itself once every front-end has gone
            inference.join(max(5.0, deadline - time.monotonic()))
            if inference.is_alive():
                log.error("the inference worker %s did not stop: killing it", inference.pid)
                inference.kill()
                inference.join(5.0)
            for name in names:  # left behind by a worker that died
                with contextlib.suppress(FileNotFoundError):
                    shared_memory.SharedMemory(name).unlink()
    return code


def port_problem(config: ServeConfig) -> str | None:
    """Why the server could not listen on its host and port, found by binding a throwaway
    socket before the model loads (a busy port then costs no start-up time); None if it can."""
    if config.port == 0:
        return None
    try:
        infos = socket.getaddrinfo(config.host or None, config.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on host {config.host!r} ({exc.strerror}): check --host"
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # As asyncio's server binds: SO_REUSEADDR, so sockets in TIME_WAIT do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (f"port {config.port} on {config.host} is in use (another server "
                            f"running?): stop it, or choose a free port with --port N "
                            f"(or STREAMFER_PORT)")
                if exc.errno == errno.EACCES:
                    return (f"no permission to listen on port {config.port} (ports below 1024 "
                            f"need root): choose a port of 1024 or more with --port N")
                return (f"cannot listen on {config.host}:{config.port} ({exc.strerror}): "
                        f"check --host and --port")
    return None


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv)
    if (problem := port_problem(config)) is not None:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        raise SystemExit(2)  # a usage error, like a bad flag
    _setup_logging(config)
    try:  # one line and exit 2, before any process starts, when torch is needed and missing
        check_torch(config.model, config.device, config.runtime)
    except ModelError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    if config.processes > 1 or config.inference_worker:
        raise SystemExit(serve_processes(config))
    code = _serve_one(config)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
