"""Hostile clients and inputs for the hardening and fuzz tests (issue 10): raw sockets that
misbehave at the byte level, decompression-bomb PNGs made on the fly, the server's memory.

Everything runs against a real server on 127.0.0.1, bounded in time and size.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

# -- decompression bombs: generated here, never committed -----------------------------------


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png_bomb(side: int = 30000, extra: bytes = b"") -> bytes:
    """A side x side 1-bit black PNG (~110 KB for 30000: 900 Mpx), `extra` chunks before IDAT."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def bomb_variants() -> dict[str, bytes]:
    """The PNG bombs of issue 10: one each way a header parser can be made to give up."""
    return {
        # Pillow checks ancillary chunks' CRCs and gives up; libpng only warns and decodes.
        "text_bad_crc": png_bomb(extra=png_chunk(b"tEXt", b"Comment\x00hello", crc=0)),
        # Pillow refuses a text chunk inflating past 1 MB (ValueError); libpng decodes.
        "ztxt_over_1mb": png_bomb(extra=png_chunk(
            b"zTXt", b"Comment\x00\x00" + zlib.compress(b"x" * 2_000_000, 9))),
        "plain": png_bomb(),  # a well-formed one: the header says 900 Mpx
        # Found by tests/test_fuzz.py: an 80x60 PNG whose IDAT length field claims 3.5 GB;
        # OpenCV 4.14 allocates what the field says (+3.4 GB peak RSS).
        "idat_length": png_bomb(80)[:33] + struct.pack(">I", 0xD3000007)
        + png_bomb(80)[37:],
    }


# -- the server process ---------------------------------------------------------------------


def memory_mb(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0
    return out


def get_json(url: str, timeout: float = 10.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_until(predicate, timeout: float, step: float = 0.1) -> float | None:
    """Seconds until predicate() held (polled), or None when it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None


# -- raw WebSocket client ---------------------------------------------------------------------


def raw_socket(port: int, *, rcvbuf: int | None = None, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the server; `rcvbuf` shrinks its receive buffer (set before connect,
    so the window the server sees is small too)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def ws_upgrade(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket handshake by hand; returns the socket after the 101 response's headers."""
    s = raw_socket(port, rcvbuf=rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: leave the greeting unread in the socket
        if not chunk:
            raise ConnectionError("server closed during the handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return s


def ws_frame(payload: bytes, opcode: int = 0x2, *, fin: bool = True,
             length: int | None = None) -> bytes:
    """One masked client frame (opcode 1 text, 2 binary, 9 ping, 10 pong, 8 close);
    `length` overrides the declared payload length (to promise more than is sent)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = os.urandom(4)
    keys = (mask * (len(payload) // 4 + 1))[:len(payload)]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(
        len(payload), "big") if payload else b""
    return head + mask + body



# -- JPEG scan bombs and junk: made by the benchmark that measures them ------------------------

from bench.hostile_decode import junk_jpegs, progressive_jpeg, scan_bomb  # noqa: E402

__all__ = ["junk_jpegs", "progressive_jpeg", "scan_bomb"]
