"""`python -m streamfer.serve`: run the server until SIGINT/SIGTERM, then shut down gracefully.

Startup logs one line with the model, device, classes and the URL(s) to open on a phone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import ssl
import tempfile
from collections.abc import AsyncIterator, Sequence

from streamfer.imagecheck import limit_opencv

limit_opencv()  # OpenCV reads its pixel limit once, at import: set it before anything imports cv2

import torch  # noqa: E402
from aiohttp import web  # noqa: E402

from streamfer.app import STATE, close_streams, init_app  # noqa: E402
from streamfer.config import HTTP_DRAIN_S, ServeConfig, parse_config  # noqa: E402
from streamfer.model import ModelError  # noqa: E402
from streamfer.tls import lan_addresses, self_signed, server_context  # noqa: E402

log = logging.getLogger("streamfer.serve")


class OneLineForCutClients(logging.Filter):
    """When the write deadline (TCP_USER_TIMEOUT, see app._write_deadline) drops a client in
    the middle of a response, aiohttp logs the ETIMEDOUT with a traceback; one INFO line is
    enough (hundreds of such clients must not flood the log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
            record.msg, record.args = "a client stopped taking its response: cut (%s)", (
                exc.strerror,)
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


@contextlib.asynccontextmanager
async def running(config: ServeConfig) -> AsyncIterator[tuple[web.AppRunner, list[str]]]:
    """Start the server for `config`; yields (runner, urls); shuts down gracefully on exit."""
    with tempfile.TemporaryDirectory(prefix="streamfer-tls-") as tmp:
        ssl_ctx: ssl.SSLContext | None = None
        if config.https:
            named = [] if config.host in ("0.0.0.0", "::", "") else [config.host]
            certfile, keyfile = self_signed(tmp, hosts=named)
            ssl_ctx = server_context(certfile, keyfile)
        elif config.certfile is not None and config.keyfile is not None:
            ssl_ctx = server_context(config.certfile, config.keyfile)
        app = init_app(config)
        # keepalive_timeout: aiohttp closes a connection whose next request's headers are not
        # complete this long after it opened or after the previous reply (slow-loris headers).
        runner = web.AppRunner(app, shutdown_timeout=HTTP_DRAIN_S, access_log=None,
                               keepalive_timeout=config.read_timeout_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_ctx)
            await site.start()
            port = runner.addresses[0][1]
            where = urls(config, port)
            p = app[STATE].predictor
            log.info("streamfer: model %s on %s, classes %s, tta %s, serving %s%s",
                     p.name, p.device, ",".join(p.classes), p.tta, " ".join(where),
                     " (self-signed certificate: accept it once in the browser)"
                     if config.https else "")
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


async def serve(config: ServeConfig) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(config):
        await stop.wait()
        log.info("shutting down: answering frames in flight, then closing sockets")


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv)
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(OneLineForCutClients())
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        asyncio.run(serve(config))
    except ModelError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
