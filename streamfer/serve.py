"""`python -m streamfer.serve`: run the server until SIGINT/SIGTERM, then shut down gracefully.

Startup logs one line with the model, device, classes and the URL(s) to open on a phone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import tempfile
from collections.abc import AsyncIterator, Sequence

import torch
from aiohttp import web

from streamfer.app import STATE, init_app
from streamfer.config import ServeConfig, parse_config
from streamfer.model import ModelError
from streamfer.tls import lan_addresses, self_signed, server_context

log = logging.getLogger("streamfer.serve")


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
        runner = web.AppRunner(app, shutdown_timeout=config.shutdown_timeout_s + 1.0,
                               access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_ctx)
            await site.start()
            port = runner.addresses[0][1]
            where = urls(config, port)
            p = app[STATE].predictor
            pipe = app[STATE].pipeline
            log.info("streamfer: model %s on %s, classes %s, tta %s, faces by %s, serving %s%s",
                     p.name, p.device, ",".join(p.classes), p.tta,
                     pipe.detector.description if pipe else "?", " ".join(where),
                     " (self-signed certificate: accept it once in the browser)"
                     if config.https else "")
            yield runner, where
        finally:
            await runner.cleanup()


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
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        asyncio.run(serve(config))
    except ModelError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
