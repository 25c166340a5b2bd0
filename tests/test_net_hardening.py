"""The network side of the server's hardening, against the real server on 127.0.0.1: one
hostile client at a time (tiny-part multipart, held uploads, message floods on a WebSocket,
idle sockets before any handshake, path spellings, foreign Host names), each answered as
docs/PROTOCOL.md says while an honest client goes on being served.

Every attack is bounded in time and size. Figures are printed (-s); no assert is a timing
measurement except the documented deadlines themselves, with slack.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest

from streamfer import protocol
from streamfer.protocol import pack_frame
from streamfer.server import guard, vendor
from tests.hostile import get_json, memory_mb, raw_socket, wait_until, ws_frame, ws_upgrade
from tests.kit.serverproc import Server, running_server

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 30.0
MAX_FRAME = 8192
LIMITS = ("--device", "cpu", "--workers", "1", "--read-timeout-s", "2",
          "--write-timeout-s", "2", "--heartbeat-s", "3", "--max-fps", "30",
          "--max-frame-bytes", str(MAX_FRAME), "--max-upload-bytes", "4000000",
          "--max-uploads", "2", "--max-connections", "8", "--max-sockets", "40",
          "--metrics-from", "10.0.0.0/8")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.fixture(scope="module")
def crop_jpeg() -> bytes:
    from skimage import data

    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)[60:220, 150:310]
    ok, buf = cv2.imencode(".jpg", cv2.resize(gray, (64, 64)))
    assert ok and len(buf) < MAX_FRAME
    return buf.tobytes()


@pytest.fixture(scope="module")
def server_args() -> tuple[str, ...]:
    """The module's `server` (tests/conftest.py) runs with LIMITS."""
    return LIMITS


class Honest:
    """A well-behaved streaming client in its own thread: crops at 15 fps, every reply
    recorded (latency), while a test attacks."""

    def __init__(self, server: Server, crop: bytes, fps: float = 15.0) -> None:
        self.url, self.crop, self.period = server.url, crop, 1.0 / fps
        self.sent = 0
        self.replies: list[tuple[str, float]] = []  # (status, seconds)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
                await asyncio.wait_for(ws.receive_json(), BOUND_S)
                while not self._stop.is_set():
                    t = time.monotonic()
                    await ws.send_bytes(pack_frame(self.sent, self.crop, is_crop=True))
                    self.sent += 1
                    reply = await asyncio.wait_for(ws.receive_json(), BOUND_S)
                    self.replies.append((reply["status"], time.monotonic() - t))
                    await asyncio.sleep(max(0.0, self.period - (time.monotonic() - t)))
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Honest:
        self._thread.start()
        assert wait_until(lambda: self.replies or self.error, BOUND_S) is not None
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(BOUND_S)

    def check(self, what: str) -> None:
        """Every frame it sent was answered ok; prints its p99."""
        assert self.error is None, f"{what}: the honest client failed: {self.error!r}"
        lat = sorted(s for _, s in self.replies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
        print(f"{what}: honest client {len(self.replies)}/{self.sent} answered, p99 "
              f"{p99:.0f} ms")
        assert len(self.replies) >= self.sent - 1 and self.replies
        assert all(status == "ok" for status, _ in self.replies), self.replies[-5:]


def new_log(server: Server, before: str) -> str:
    return server.log_path.read_text()[len(before):]


# -- /api/predict: multipart, admission, the photo deadline -----------------------------------


def tiny_parts(count: int) -> bytes:
    part = b"--b\r\nContent-Disposition: form-data; name=\"j\"\r\n\r\nx\r\n"
    return part * count + b"--b--\r\n"


async def test_a_body_of_tiny_parts_is_refused_quickly_and_streaming_goes_on(
        server: Server, crop_jpeg: bytes) -> None:
    body = tiny_parts(10_000)  # ~500 KB of parts
    with Honest(server, crop_jpeg) as honest:
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            async with session.post(server.base + "/api/predict", data=body, headers={
                    "Content-Type": "multipart/form-data; boundary=b"}) as resp:
                reply = await resp.json()
            took = time.monotonic() - t0
        await asyncio.sleep(0.5)
    print(f"\n{len(body)} bytes of tiny parts: HTTP {resp.status} in {took * 1000:.0f} ms")
    assert resp.status == 400 and "more than 16 parts" in reply["error"], reply
    honest.check("tiny-part multipart")


def hold_upload(port: int, length: int, sent: int) -> socket.socket:
    """An upload that announces `length` bytes, sends `sent` of them and stalls."""
    s = raw_socket(port)
    s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
              b"Content-Length: %d\r\n\r\n" % length + b"\xff" * sent)
    return s


def response_head(s: socket.socket, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while b"\r\n\r\n" not in out and (chunk := s.recv(4096)):
            out += chunk
    except (TimeoutError, OSError):
        pass
    return out


async def test_uploads_past_the_admission_bound_get_503_with_retry_after(
        server: Server, crop_jpeg: bytes) -> None:
    port = server.port
    held = [hold_upload(port, 3_000_000, 100_000) for _ in range(2)]  # --max-uploads 2
    try:
        await asyncio.sleep(0.3)
        extra = hold_upload(port, 3_000_000, 0)  # refused before its body is read
        head = await asyncio.to_thread(response_head, extra)
        extra.close()
        print(f"\nthird upload while two are held: {head.splitlines()[0] if head else None}")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head, head
        with Honest(server, crop_jpeg) as honest:  # streaming is not held up by uploads
            await asyncio.sleep(1.0)
        honest.check("two held uploads")
    finally:
        for s in held:
            s.close()
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as session, session.post(
            server.base + "/api/predict?crop=1", data=crop_jpeg) as resp:
        assert resp.status == 200, await resp.text()  # admitted again once they left


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    """A ~2 MB JPEG photo with a face (scikit-image's astronaut, enlarged, noise added so it
    does not compress away)."""
    from skimage import data

    img = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (2400, 2400))
    noise = np.random.default_rng(0).integers(-12, 13, img.shape, dtype=np.int16)
    img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok and 1_700_000 < len(buf) < 3_900_000, len(buf)
    return buf.tobytes()


def paced_upload(port: int, data: bytes, rate: float) -> bytes:
    """POST `data` at `rate` bytes a second; the whole response."""
    s = raw_socket(port, timeout=BOUND_S)
    try:
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                  b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data))
        step = 32 * 1024
        start = time.monotonic()
        for i in range(0, len(data), step):
            s.sendall(data[i:i + step])
            time.sleep(max(0.0, start + (i + step) / rate - time.monotonic()))
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
    finally:
        s.close()


def test_a_2mb_photo_uploaded_at_2mb_per_s_is_answered(server: Server,
                                                       big_photo: bytes) -> None:
    t0 = time.monotonic()
    reply = paced_upload(server.port, big_photo, 2_000_000)
    status_line = reply.split(b"\r\n", 1)[0]
    print(f"\n{len(big_photo)} byte photo at 2 MB/s: {status_line!r} after "
          f"{time.monotonic() - t0:.1f} s")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:600]
    assert b'"dropped"' not in reply


# -- WebSocket message floods ----------------------------------------------------------------


def flood_message(kind: str) -> bytes:
    return {
        "empty": ws_frame(b""),
        "text": ws_frame(b"hi", opcode=0x1),
        "wrong_version": ws_frame(struct.pack(">BBHI", 9, 1, 0, 1) + b"x"),
        "oversize": ws_frame(struct.pack(">BBHI", 1, 1, 0, 1) + b"x" * (MAX_FRAME + 1)),
        "ping": ws_frame(b"p", opcode=0x9),
        "frames": ws_frame(struct.pack(">BBHI", 1, 1, 0, 1) + b"\xff\xd8junk"),
    }[kind]


def close_code(s: socket.socket, limit: float) -> int | None:
    """Read server frames until its close frame: its code (None: closed without one)."""
    s.settimeout(limit)
    buf = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            n, at = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, at = struct.unpack(">Q", buf[2:10])[0], 10
            if len(buf) < at + n:
                break
            if buf[0] & 0x0F == 0x8:
                return struct.unpack(">H", buf[at:at + 2])[0] if n >= 2 else None
            buf = buf[at + n:]
        try:
            chunk = s.recv(1 << 16)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        buf += chunk
    return None


@pytest.mark.parametrize("kind", ["empty", "text", "wrong_version", "oversize", "ping",
                                  "frames"])
async def test_a_message_flood_is_closed_with_1008_and_others_go_on(
        server: Server, crop_jpeg: bytes, kind: str) -> None:
    one = flood_message(kind)
    count = max(300, min(20_000, 400_000 // len(one)))
    with Honest(server, crop_jpeg) as honest:
        s = ws_upgrade(server.port)
        try:
            t0 = time.monotonic()
            with_reader = asyncio.to_thread(close_code, s, 10.0)
            task = asyncio.ensure_future(with_reader)
            with contextlib.suppress(OSError):  # closed while still sending: the point
                await asyncio.to_thread(s.sendall, one * count)
            code = await task
            took = time.monotonic() - t0
        finally:
            s.close()
        await asyncio.sleep(0.5)
    print(f"\n{count} {kind} messages ({len(one) * count} bytes): closed with {code} after "
          f"{took * 1000:.0f} ms")
    assert code == protocol.CLOSE_ABUSE
    honest.check(f"{kind} flood")


# -- connections before any handshake ---------------------------------------------------------


async def test_idle_sockets_cannot_lock_out_talking_clients(
        server: Server, crop_jpeg: bytes) -> None:
    """80 silent sockets against --max-sockets 40: each new one past the cap closes the
    oldest silent one, so descriptors stay bounded and an honest client still gets in."""
    assert server.proc is not None
    before_log = server.log_path.read_text()
    fds_before = open_fds(server.proc.pid)
    socks = [raw_socket(server.port, timeout=5) for _ in range(80)]
    try:
        await asyncio.sleep(0.5)
        peak = open_fds(server.proc.pid)
        with Honest(server, crop_jpeg) as honest:  # while all 80 are held open
            await asyncio.sleep(1.0)
        closed = sum(response_head(s, 0.05) == b"" for s in socks[:20])
        print(f"\n80 silent sockets: server descriptors {fds_before} -> {peak}; "
              f"{closed} of the first 20 closed to make room")
        assert peak - fds_before <= 40 + 5 and closed == 20
        honest.check("80 silent sockets held")
    finally:
        for s in socks:
            s.close()
    log = new_log(server, before_log)
    assert "Traceback" not in log and len(log.splitlines()) <= 5, log[-2000:]


async def test_past_the_cap_of_talking_connections_a_new_one_gets_503(
        server: Server) -> None:
    """Connections that have each sent part of a request are not silent: past the cap a
    new one is refused with 503 and closed; once they time out (--read-timeout-s 2) the
    server has its descriptors back."""
    assert server.proc is not None
    fds_before = open_fds(server.proc.pid)
    socks = []
    for _ in range(40):
        s = raw_socket(server.port, timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
        socks.append(s)
    try:
        await asyncio.sleep(0.5)
        extra = raw_socket(server.port, timeout=5)
        head = await asyncio.to_thread(response_head, extra, 2.0)
        extra.close()
        first = head.split(b"\r\n")[0] if head else None
        print(f"\n41st connection with 40 talking: {first!r}")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in head, head
        assert await asyncio.to_thread(
            wait_until, lambda: open_fds(server.proc.pid) <= fds_before + 2, 10) is not None
    finally:
        for s in socks:
            s.close()


def test_malformed_http_and_handshake_resets_log_one_line_each(server: Server) -> None:
    before = server.log_path.read_text()
    port = server.port
    bad = [b"\x16\x03\x01 this is not HTTP\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n",
           b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked"
           b"\r\n\r\nzz\r\n", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n"]
    for i in range(12):
        s = raw_socket(port)
        s.sendall(bad[i % len(bad)])
        assert response_head(s, 2.0).startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
        s.close()
    for _ in range(10):  # a WebSocket handshake the client abandons with a reset
        s = raw_socket(port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        s.close()
    time.sleep(1.0)
    assert get_json(server.base + "/healthz")[0] == 200
    log = new_log(server, before)
    print(f"\n12 malformed requests + 10 reset handshakes -> {len(log.splitlines())} log lines")
    assert "Traceback" not in log and len(log.splitlines()) <= 22, log[-3000:]


# -- paths, hosts, internals -----------------------------------------------------------------

BYPASSES = ["/node_modules/.package-lock.json", "/./node_modules/.package-lock.json",
            "/x/../node_modules/.package-lock.json", "/node_modules%2F.package-lock.json",
            "/%2e/node_modules/.package-lock.json", "/%6Eode_modules/.package-lock.json",
            "/.\\node_modules\\.package-lock.json", "//node_modules/.package-lock.json",
            "/%252e/node_modules/.package-lock.json", "/NODE_MODULES/.package-lock.json"]


@pytest.mark.parametrize("path", BYPASSES)
def test_node_modules_is_hidden_however_the_path_is_spelt(server: Server, path: str) -> None:
    assert guard.path_hidden(path)
    s = raw_socket(server.port)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                  .encode())
        head = response_head(s)
    finally:
        s.close()
    assert head.startswith((b"HTTP/1.1 404", b"HTTP/1.1 400")), head[:300]


def test_the_page_and_vendor_files_are_still_served(server: Server) -> None:
    assert not guard.path_hidden("/app.js") and not guard.path_hidden("/vendor/x@1/a.js")
    assert get_json(server.base + "/healthz")[0] == 200
    page = vendor.find(ROOT / "web")
    with urllib.request.urlopen(server.base + "/", timeout=10) as r:
        assert r.status == 200
    if page is None:
        pytest.skip(vendor.MISSING)
    url = server.base + "/" + page.url + vendor.SCRIPT
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and len(r.read()) > 1000


async def test_a_foreign_host_name_is_refused_and_lan_addresses_are_not(
        server: Server, crop_jpeg: bytes) -> None:
    port = server.port
    async with aiohttp.ClientSession() as session:
        for host, want in ((f"rebind.example:{port}", 403), (f"192.168.1.20:{port}", 200),
                           (f"localhost:{port}", 200), (f"[::1]:{port}", 200),
                           (f"phone-lab.home.arpa:{port}", 200), ("lab.streamfer.test", 200),
                           (f"rebind.example.local.evil.example:{port}", 403)):
            async with session.get(server.base + "/", headers={"Host": host}) as resp:
                assert resp.status == want, (host, resp.status)
        async with session.get(server.base + "/", headers={  # a proxy chose it by name
                "Host": "streamfer.example.org", "X-Forwarded-For": "203.0.113.7"}) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(server.url, headers={
                "Host": f"rebind.example:{port}", "Origin": f"http://rebind.example:{port}"})
        assert err.value.status == 403


def test_internals_only_for_metrics_from(server: Server) -> None:
    status, body = get_json(server.base + "/healthz")  # loopback is not in 10.0.0.0/8
    assert status == 200 and body == {"status": "ok"}
    try:
        urllib.request.urlopen(server.base + "/metrics", timeout=10)
        raise AssertionError("/metrics answered outside --metrics-from")
    except urllib.error.HTTPError as err:
        assert err.code == 403


def test_by_default_loopback_reads_metrics(tiny_model_path: Path, tmp_path: Path) -> None:
    with running_server(tiny_model_path, ("--device", "cpu", "--workers", "1"),
                        log_path=tmp_path / "s.log", start_timeout=120) as srv:
        assert "pid" in srv.health and "model" in srv.health
        with urllib.request.urlopen(srv.base + "/metrics",
                                                          timeout=10) as r:
            assert b"streamfer_" in r.read()
        # The same request through a proxy (it says whom it forwards for) gets the status.
        request = urllib.request.Request(
            srv.base + "/healthz", headers={"X-Forwarded-For": "203.0.113.7"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.read() == b'{"status": "ok"}'
        assert "every interface" not in srv.log_path.read_text()  # bound to 127.0.0.1
        assert "listening on 127.0.0.1 only" in srv.log_path.read_text()


# -- --https: the certificate kept, no temporary folders --------------------------------------


def fingerprint_of(port: int) -> str:
    import hashlib

    pem = ssl.get_server_certificate(("127.0.0.1", port))
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


# The one temporary folder the server may make without being asked: multiprocessing's own (the
# decode processes' fork server socket), with no key material. (Video jobs make theirs at the
# first upload.)
OTHERS_TMP = ("pymp-",)


def made_here(tmp: Path) -> list[Path]:
    """What the server left in its TMPDIR besides OTHERS_TMP, and any PEM file anywhere."""
    return [p for p in tmp.iterdir() if not p.name.startswith(OTHERS_TMP)] + \
        list(tmp.rglob("*.pem"))


def test_https_keeps_its_certificate_and_makes_no_temp_dirs(
        tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, tmp = tmp_path / "state", tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv("TMPDIR", str(tmp))
    args = ("--device", "cpu", "--workers", "1", "--https", "--tls-handshake-timeout-s", "1")
    prints = []
    for run in range(2):
        with running_server(tiny_model_path, args, log_path=tmp_path / f"s{run}.log",
                            start_timeout=120) as srv:
            port = srv.port
            prints.append(fingerprint_of(port))
            assert prints[-1] in srv.log_path.read_text()  # printed in the start line
            # A socket that never starts its handshake is closed after 1 s.
            s = raw_socket(port)
            t0 = time.monotonic()
            s.settimeout(5)
            try:
                got = s.recv(100)
            except OSError:
                got = b""
            s.close()
            assert got == b"" and time.monotonic() - t0 < 4
            assert made_here(tmp) == [], made_here(tmp)
    print(f"\ntwo starts, fingerprints {prints}")
    assert prints[0] == prints[1]
    folder = state / "streamfer"
    assert folder.stat().st_mode & 0o777 == 0o700
    for f in folder.iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    # Without --https nothing is made at all.
    with running_server(tiny_model_path, ("--device", "cpu", "--workers", "1"),
                        log_path=tmp_path / "plain.log", start_timeout=120):
        assert made_here(tmp) == []


def test_a_certificate_for_other_names_is_replaced(tmp_path: Path) -> None:
    from streamfer.server import tls

    folder = tls.state_dir(tmp_path / "s")
    first = tls.persistent(folder, hosts=["a.lan"])
    again = tls.persistent(folder, hosts=["a.lan"])
    other = tls.persistent(folder, hosts=["b.lan"])
    assert not first.reused and again.reused and not other.reused
    assert first.fingerprint == again.fingerprint != other.fingerprint


# -- memory under held uploads ---------------------------------------------------------------


@pytest.mark.slow
def test_120_held_uploads_stay_within_the_memory_bound(tiny_model_path: Path,
                                                       tmp_path: Path) -> None:
    """The defaults (--max-uploads 8, --max-upload-bytes 20 MB): 120 clients each announce
    a 20 MB photo and send 1 MB of it; 8 are admitted, the others get 503 + Retry-After
    before their body is read; peak RSS grows by less than 8 x 20 MB (the bound docs/DEPLOY.md
    states), and falls back once they leave."""
    with running_server(tiny_model_path, ("--device", "cpu", "--workers", "1",
                                          "--max-sockets", "256"),
                        log_path=tmp_path / "s.log", start_timeout=120) as srv:
        assert srv.proc is not None
        before = memory_mb(srv.proc.pid)
        port = srv.port
        socks = []
        for _ in range(120):
            s = raw_socket(port)
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      b"image/jpeg\r\nContent-Length: 20000000\r\n\r\n")
            socks.append(s)
        refused = 0
        for s in socks:
            s.settimeout(0.05)
            with contextlib.suppress(OSError):
                s.sendall(b"\xff" * 1_000_000)
        time.sleep(1.0)
        for s in socks:
            refused += response_head(s, 0.2).startswith(b"HTTP/1.1 503")
        after = memory_mb(srv.proc.pid)
        for s in socks:
            s.close()
        growth = after["VmHWM"] - before["VmHWM"]
        print(f"\n120 held 20 MB uploads: {refused} refused with 503, peak RSS "
              f"{before['VmHWM']:.0f} -> {after['VmHWM']:.0f} MB")
        assert refused >= 120 - 8
        assert growth < 8 * 20
