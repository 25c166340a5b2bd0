"""The load test's clients: N WebSocket connections, each behaving like the phone page.

Each connection sends frames on a fixed clock (`fps`) and, like the page, keeps at most
`window` frames unanswered: a frame slot that comes due while the window is full is not sent
(counted, so an overloaded server shows up as lost frames, not as an unbounded queue on the
client). Every reply is matched to its frame by id; frames still unanswered a grace period
after the clock stops are "missing" -- the protocol promises one reply per frame, never
silence, so any missing reply is a server bug.

A server shutting down says so first (protocol.closing): the client then sends nothing more
on that connection and waits for the replies to what it sent.

With `reconnect`, a connection the server side loses (a replica killed behind a load
balancer, say) is opened again, as the page does: the frames it left unanswered are counted
as lost on the disconnect -- reported, not missing -- and the clock goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from streamfer.loadtest.frames import FrameSet
from streamfer.protocol import DROPPED, ERROR, NO_FACE, OK, TIMING_KEYS, WINDOW

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Load:
    """What one run offers the server."""

    url: str
    clients: int
    fps: float
    seconds: float
    window: int | None = None  # None: the greeting's limits.window (default 2)
    grace: float = 3.0  # how long to wait for the last replies after the clock stops
    connect_timeout: float = 10.0
    insecure: bool = False
    origin: str | None = None  # None: the URL's own origin, as the served page would send
    reconnect: bool = False  # open a lost connection again (frames in flight count as lost)


@dataclass
class ClientLog:
    """What one connection saw. Latencies are seconds from send to reply."""

    slots: int = 0
    sent: int = 0
    not_sent_window_full: int = 0
    not_sent_late: int = 0
    answered: int = 0
    statuses: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    rtt: list[float] = field(default_factory=list)
    rtt_ok: list[float] = field(default_factory=list)
    server_ms: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in TIMING_KEYS})
    batches: Counter = field(default_factory=Counter)
    missing: list[int] = field(default_factory=list)
    protocol: Counter = field(default_factory=Counter)  # replies the protocol forbids
    hello: dict | None = None
    reconnects: int = 0
    lost_on_disconnect: int = 0  # sent, then the connection was lost before the reply
    not_sent_disconnected: int = 0  # slots that came due while reconnecting
    reconnect_failures: Counter = field(default_factory=Counter)
    # The server ended this connection before the clock ran out (and it was not opened
    # again): "closing" (its shutdown notice) or "lost" (closed or gone without one), and the
    # frame slots left unsent for it.
    ended_by_server: str | None = None
    not_sent_server_closed: int = 0


def origin_of(url: str) -> str:
    """The http(s) origin a page served from the same host would send for `url`."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


def error_reason(reply: dict) -> str:
    """An error reply's `code: message` (the code alone groups errors; the message explains)."""
    code, message = reply.get("code"), reply.get("error")
    return f"{code}: {message}" if code else str(message)


def ssl_context(load: Load) -> ssl.SSLContext | bool:
    if not load.insecure:
        return True
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """One connection: a sender on a fixed clock and a reader matching replies to frames."""

    def __init__(self, index: int, load: Load, frames: FrameSet) -> None:
        self.index = index
        self.load = load
        self.frames = frames
        self.log = ClientLog()
        self.pending: dict[int, float] = {}
        self.drained = asyncio.Event()
        self.drained.set()
        self.window = load.window or WINDOW
        self.start = 0.0  # loop time of the first slot
        self.total = 0  # frame slots in the run
        self.slot = 0  # next slot on the clock
        self.frame_id = 0  # next frame id (ids stay unique across reconnects)
        self.server_closing = False  # this connection's server sent its closing notice

    async def connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        """Open the socket and read the greeting (which sets the send window)."""
        ws = await asyncio.wait_for(session.ws_connect(
            self.load.url, origin=self.load.origin or origin_of(self.load.url),
            ssl=ssl_context(self.load), heartbeat=None, autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        ), self.load.connect_timeout)
        msg = await ws.receive(timeout=self.load.connect_timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            await ws.close()
            raise ConnectionError(f"expected the greeting, got a {msg.type.name} message")
        hello = json.loads(msg.data)
        if hello.get("type") != "hello":
            await ws.close()
            raise ConnectionError(f"expected the greeting, got {msg.data[:200]!r}")
        self.log.hello = hello
        if self.load.window is None:
            self.window = int(hello.get("limits", {}).get("window", WINDOW))
        return ws

    def _on_reply(self, reply: dict, now: float) -> None:
        fid = reply.get("id")
        status = reply.get("status")
        if reply.get("type") == "closing":  # the server is shutting down: send no more
            self.server_closing = True
            return
        if reply.get("type") != "result":
            self.log.protocol[f"unexpected message type {reply.get('type')!r}"] += 1
            return
        if fid is None or fid not in self.pending:
            # id null: the server could not read our header -- our frames are well formed,
            # so this is as wrong as a reply to a frame never sent or answered twice.
            self.log.protocol["reply with unknown or repeated id"] += 1
            if status == ERROR:
                self.log.errors[error_reason(reply)] += 1
            return
        sent_at = self.pending.pop(fid)
        if not self.pending:
            self.drained.set()
        rtt = now - sent_at
        self.log.answered += 1
        self.log.statuses[status] += 1
        self.log.rtt.append(rtt)
        if status in (OK, NO_FACE):
            self.log.rtt_ok.append(rtt)
            for key, value in (reply.get("timings_ms") or {}).items():
                if key in self.log.server_ms and isinstance(value, (int, float)):
                    self.log.server_ms[key].append(float(value))
            if status == OK and isinstance(reply.get("batch"), int):
                self.log.batches[reply["batch"]] += 1
            if status == OK and self.log.hello is not None and \
                    list(reply.get("probs") or {}) != list(self.log.hello.get("classes") or []):
                self.log.protocol["probs do not name the greeting's classes"] += 1
        elif status == DROPPED:
            self.log.dropped[str(reply.get("reason"))] += 1
        elif status == ERROR:
            self.log.errors[error_reason(reply)] += 1
        else:
            self.log.protocol[f"unknown status {status!r}"] += 1

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            now = time.perf_counter()
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    reply = json.loads(msg.data)
                except ValueError:
                    self.log.protocol["reply is not JSON"] += 1
                    continue
                if isinstance(reply, dict):
                    self._on_reply(reply, now)
                else:
                    self.log.protocol["reply is not a JSON object"] += 1
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.log.protocol["binary reply"] += 1
            else:
                break

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, reader: asyncio.Task) -> bool:
        """Send the remaining frame slots on the clock, honouring the window. Returns False
        when the connection was lost first (the reader ended), True when the clock ran out."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.load.fps
        while self.slot < self.total:
            due = self.start + self.slot * period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.wait({reader}, timeout=delay)
            if reader.done() or ws.closed or self.server_closing:
                return False
            # A client that fell whole periods behind its clock skips the slots it missed
            # instead of bursting to catch up (a camera does not queue frames).
            behind = min(int((loop.time() - due) / period), self.total - self.slot - 1)
            if behind > 0:
                self.log.slots += behind
                self.log.not_sent_late += behind
                self.slot += behind
            self.log.slots += 1
            self.slot += 1
            if len(self.pending) >= self.window:
                self.log.not_sent_window_full += 1
                continue
            frame_id = self.frame_id
            self.pending[frame_id] = time.perf_counter()
            self.drained.clear()
            try:
                await ws.send_bytes(self.frames.message(frame_id))
            except (ConnectionError, RuntimeError):
                self.pending.pop(frame_id, None)
                if not self.pending:
                    self.drained.set()
                if not self.load.reconnect:
                    self.log.protocol["connection lost while sending"] += 1
                return False
            self.log.sent += 1
            self.frame_id += 1
        return True

    async def _reconnect(self, session: aiohttp.ClientSession
                         ) -> aiohttp.ClientWebSocketResponse | None:
        """Connect again with a short backoff until it works or the clock runs out; the
        slots that come due meanwhile are counted as not sent."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.load.fps
        backoff = 0.05
        while True:
            try:
                ws = await self.connect(session)
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as exc:
                self.log.reconnect_failures[type(exc).__name__] += 1
                ws = None
            now_slot = min(self.total, max(self.slot, int((loop.time() - self.start) / period)))
            self.log.slots += now_slot - self.slot
            self.log.not_sent_disconnected += now_slot - self.slot
            self.slot = now_slot
            if ws is not None:
                self.log.reconnects += 1
                return ws
            if self.slot >= self.total:
                return None
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, 1.0)

    async def run(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                  start: float) -> None:
        """Stream `seconds * fps` frame slots on the clock from `start` (loop time)."""
        self.start = start
        self.total = max(1, round(self.load.seconds * self.load.fps))
        while True:
            self.server_closing = False
            reader = asyncio.create_task(self._read(ws))
            try:
                finished = await self._send(ws, reader)
                if finished or self.server_closing:  # a closing server answers what was sent
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.drained.wait(), self.load.grace)
                if not finished and self.load.reconnect and self.slot < self.total:
                    # Give replies already on the wire a moment (a closing server closes
                    # once it has answered), then write off the rest.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(
                            reader, self.load.grace if self.server_closing else 0.5)
            finally:
                lost = ws.closed or reader.done()
                written_off = self.load.reconnect and lost
                if written_off:
                    self.log.lost_on_disconnect += len(self.pending)
                    self.pending.clear()
                    self.drained.set()
                elif lost and self.pending:
                    self.log.protocol["connection closed by the server"] += 1
                self.log.missing = sorted(self.pending)
                await ws.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader, 2.0)
                if not reader.done():
                    reader.cancel()
            if not finished and not written_off and self.slot < self.total:
                self.log.ended_by_server = "closing" if self.server_closing else "lost"
                left = self.total - self.slot
                self.log.slots += left
                self.log.not_sent_server_closed += left
                self.slot = self.total
            if not written_off or self.slot >= self.total:
                return
            new_ws = await self._reconnect(session)
            if new_ws is None:
                return
            ws = new_ws


@dataclass
class RunLog:
    """All connections of one run."""

    load: Load
    frames: FrameSet
    clients: list[ClientLog]
    connect_errors: Counter
    hello: dict | None


async def run_load(load: Load, frames: FrameSet) -> RunLog:
    """Connect all clients, then stream for `load.seconds` on staggered clocks."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = [Client(i, load, frames) for i in range(load.clients)]
        results = await asyncio.gather(*(c.connect(session) for c in clients),
                                       return_exceptions=True)
        connect_errors: Counter = Counter()
        live: list[tuple[Client, aiohttp.ClientWebSocketResponse]] = []
        for client, result in zip(clients, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, aiohttp.WSServerHandshakeError):
                    reason = f"HTTP {result.status}"
                elif isinstance(result, asyncio.TimeoutError):
                    reason = f"no greeting within {load.connect_timeout:g} s"
                else:
                    reason = f"{type(result).__name__}: {result}"
                if isinstance(result, aiohttp.ClientConnectorCertificateError):
                    reason += " (a self-signed certificate? pass --insecure)"
                connect_errors[f"connect failed: {reason}"] += 1
            else:
                live.append((client, result))
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        period = 1.0 / load.fps
        # Stagger the clocks across one period, as independent phones would be.
        await asyncio.gather(*(c.run(session, ws, start + period * i / max(len(live), 1))
                               for i, (c, ws) in enumerate(live)))
    hello = next((c.log.hello for c in clients if c.log.hello), None)
    return RunLog(load, frames, [c.log for c in clients], connect_errors, hello)
