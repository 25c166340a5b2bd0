"""`python -m streamfer.serve`: run the server until SIGINT/SIGTERM, then shut down gracefully.

Startup logs one line with the model, device, classes and the URL(s) to open on a phone.

`--processes N` and `--inference-worker` hand over to streamfer/server/supervisor.py, which
starts N of these servers on one port (and the inference process) and supervises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
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
    parse_config,
)
from streamfer.server.connections import CappedSite  # noqa: E402
from streamfer.server.inference_worker import WorkerClient  # noqa: E402
from streamfer.server.tls import (  # noqa: E402
    Certificate,
    lan_addresses,
    server_context,
    tls_files,
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
    files = tls_files(config)
    ssl_ctx = server_context(files.certfile, files.keyfile) if files else None
    cert = files.made if files else None
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


def setup_logging(config: ServeConfig) -> None:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(OneLineForCutClients())


def serve_one(config: ServeConfig, reuse_port: bool = False, link: Connection | None = None
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
    setup_logging(config)
    try:  # one line and exit 2, before any process starts, when torch is needed and missing
        check_torch(config.model, config.device, config.runtime)
    except ModelError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    if config.processes > 1 or config.inference_worker:
        # Imported here: the supervisor's children import this module for serve_one.
        from streamfer.server.supervisor import serve_processes

        raise SystemExit(serve_processes(config))
    code = serve_one(config)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
