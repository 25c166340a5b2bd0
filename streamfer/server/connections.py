"""Every TCP connection counted from the moment it is accepted, before HTTP or TLS.

aiohttp counts requests and WebSockets, not sockets: a client that opens connections and
sends nothing (or stalls in the TLS handshake) would hold a descriptor and its buffers each,
until the process runs out of descriptors and nobody can connect. `CappedSite` listens in
aiohttp's place and puts a gate in front of aiohttp's protocol: at most `limit` connections
are open at once (a new one past it is answered 503 and closed; over TLS it is closed, there
being no way to say why before the handshake), and the TLS handshake, done here with
`loop.start_tls`, must finish within `handshake_s`. After the gate, aiohttp's own deadlines
take over (--read-timeout-s for a request's headers and between keep-alive requests).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

REFUSAL_LOG_S = 10.0  # refused connections are logged as one line per this many seconds
FULL = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s")


class ConnectionGate:
    """The count of open connections and the hand-off of each to aiohttp's protocol."""

    def __init__(self, server: web.Server, *, limit: int, ssl_context: ssl.SSLContext | None,
                 handshake_s: float) -> None:
        self.server = server
        self.limit = limit
        self.ssl_context = ssl_context
        self.handshake_s = handshake_s
        self.open = 0
        self.refused = 0  # since the last refusal log line
        self.handshakes_failed = 0
        self._logged_at = 0.0
        lost = server.connection_lost

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            self.open -= 1  # every connection handed to aiohttp ends here
            lost(handler, exc)

        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    def admit(self, transport: asyncio.Transport) -> None:
        if self.open >= self.limit:
            self._refuse(transport)
            return
        self.open += 1
        handler = self.server()
        if self.ssl_context is None:
            transport.set_protocol(handler)
            handler.connection_made(transport)
        else:
            transport.pause_reading()  # no byte of the handshake read before start_tls
            asyncio.get_running_loop().create_task(self._tls(transport, handler))

    async def _tls(self, transport: asyncio.Transport, handler: asyncio.Protocol) -> None:
        assert self.ssl_context is not None
        waiting = _Buffered()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, waiting, self.ssl_context, server_side=True,
                ssl_handshake_timeout=self.handshake_s)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError) as exc:
            self.open -= 1
            self.handshakes_failed += 1
            transport.abort()
            log.debug("TLS handshake with %s failed: %s", transport.get_extra_info("peername"),
                      exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if tls is None or tls.is_closing():
            self.open -= 1
            return
        tls.set_protocol(handler)
        handler.connection_made(tls)
        waiting.hand_over(handler)

    def _refuse(self, transport: asyncio.Transport) -> None:
        self.refused += 1
        if self.ssl_context is None:
            text = (f"server full: {self.limit} connections open (--max-sockets)\n").encode()
            transport.write(FULL % (len(text), text))
            transport.close()
        else:
            transport.abort()
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_S:
            log.warning("refused %d connection(s): %d open, the limit (--max-sockets)",
                        self.refused, self.open)
            self._logged_at, self.refused = now, 0


class _Gate(asyncio.Protocol):
    """The protocol of a connection just accepted: counts it, then steps aside."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.gate.admit(transport)


class _Buffered(asyncio.Protocol):
    """Holds what arrives between the handshake's end and aiohttp taking the connection."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        for chunk in self.data:
            protocol.data_received(chunk)
        if self.eof:
            protocol.eof_received()


class CappedSite(web.BaseSite):
    """aiohttp's TCPSite with a ConnectionGate in front of its protocol."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limit: int,
                 ssl_context: ssl.SSLContext | None, handshake_s: float,
                 reuse_port: bool | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._reuse_port = host, port, reuse_port
        assert runner.server is not None
        self.gate = ConnectionGate(runner.server, limit=limit, ssl_context=ssl_context,
                                   handshake_s=handshake_s)

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self.gate, self._host, self._port, backlog=self._backlog,
            reuse_port=self._reuse_port)
