"""Hostile clients and inputs for the hardening and fuzz tests (issue 10): raw sockets that
misbehave at the byte level, decompression-bomb PNGs made on the fly, the server's memory.

Everything runs against a real server on 127.0.0.1, bounded in time and size.
"""

from __future__ import annotations

import json
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


# -- raw WebSocket client: shared with the benchmarks --------------------------------------

# -- JPEG scan bombs and junk: made by the benchmark that measures them ------------------------
from bench.hostile_decode import junk_jpegs, progressive_jpeg, scan_bomb  # noqa: E402
from tests.kit.rawws import raw_socket, ws_frame, ws_upgrade  # noqa: E402

__all__ = ["junk_jpegs", "progressive_jpeg", "raw_socket", "scan_bomb", "ws_frame",
           "ws_upgrade"]
