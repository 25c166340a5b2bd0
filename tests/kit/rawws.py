"""A WebSocket client written at the byte level, for clients that misbehave there: the
hardening tests (tests/hostile.py) and the hostile-client benchmarks."""

from __future__ import annotations

import base64
import os
import socket
import struct


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
    if not head.startswith(b"HTTP/1.1 101"):  # refused (503 at a cap, 403, ...)
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
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
