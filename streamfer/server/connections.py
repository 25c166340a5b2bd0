"""Every TCP connection counted from the moment it is accepted, before HTTP or TLS.

aiohttp counts requests and WebSockets, not sockets: a client that opens connections and
sends nothing (or stalls in the TLS handshake) would hold a descriptor and its buffers each,
until the process runs out of descriptors and nobody can connect. `CappedSite` listens in
aiohttp's place and puts a gate in front of aiohttp's protocol: at most `limit` connections
are open at once (see below for which gives way), and the TLS handshake, done here with
`loop.start_tls`, must finish within `handshake_s`. After the gate, aiohttp's own deadlines
take over (--read-timeout-s for a request's headers and between keep-alive requests).

At the limit, a connection that has sent nothing yet (or is still in its TLS handshake) is
closed, the oldest first, to make room for the new one: sockets held open in silence cannot
lock out clients that talk. Only when every open connection has spoken is the new one
refused: a plain one is answered 503 and closed, a TLS one closed (nothing can be said
before the handshake).
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
        self.evicted = 0  # silent connections closed to make room
        # Connections that have sent nothing yet (or are in their TLS handshake), oldest first.
        self.silent: dict[_Gate, asyncio.Transport] = {}
        self._logged_at = 0.0
        lost = server.connection_lost

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            self.open -= 1  # every connection handed to aiohttp ends here
            lost(handler, exc)

        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    def admit(self, gate: _Gate, transport: asyncio.Transport) -> None:
        if self.open >= self.limit and not self._evict_silent():
            self._refuse(transport)
            return
        self.open += 1
        handler = self.server()
        if self.ssl_context is None:
            gate.handler = handler  # it forwards to aiohttp's protocol from now on
            self.silent[gate] = transport
            handler.connection_made(transport)
        else:
            transport.pause_reading()  # no byte of the handshake read before start_tls
            self.silent[gate] = transport
            asyncio.get_running_loop().create_task(self._tls(gate, transport, handler))

    def _evict_silent(self) -> bool:
        """Close the oldest connection that has sent nothing (or not finished its TLS
        handshake); False when there is none."""
        while self.silent:
            gate, transport = next(iter(self.silent.items()))
            del self.silent[gate]
            if not transport.is_closing():
                self.evicted += 1
                transport.abort()
                return True
        return False

    async def _tls(self, gate: _Gate, transport: asyncio.Transport,
                   handler: asyncio.Protocol) -> None:
        assert self.ssl_context is not None
        waiting = _Buffered()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, waiting, self.ssl_context, server_side=True,
                ssl_handshake_timeout=self.handshake_s)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError) as exc:
            self.silent.pop(gate, None)
            self.open -= 1
            self.handshakes_failed += 1
            transport.abort()
            log.debug("TLS handshake with %s failed: %s", transport.get_extra_info("peername"),
                      exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.silent.pop(gate, None)
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
            log.warning("refused %d connection(s): %d open, the limit (--max-sockets), and "
                        "none silent to make room", self.refused, self.open)
            self._logged_at, self.refused = now, 0


class _Gate(asyncio.Protocol):
    """The protocol of a plain connection: counts it, notes its first byte, and hands
    everything to aiohttp's protocol (over TLS it only starts the handshake)."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.handler: asyncio.Protocol | None = None
        self.spoke = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.gate.admit(self, transport)

    def data_received(self, data: bytes) -> None:
        if not self.spoke:
            self.spoke = True
            self.gate.silent.pop(self, None)
        if self.handler is not None:  # else refused: what it sends is dropped
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.handler is not None else None

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.silent.pop(self, None)
        if self.handler is not None:
            self.handler.connection_lost(exc)


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
