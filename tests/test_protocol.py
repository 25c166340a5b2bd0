"""The wire format of docs/PROTOCOL.md: frame header and reply bodies, and the page's copy of
it (web/protocol.js)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from streamfer import protocol
from streamfer.server.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent


def test_header_round_trip() -> None:
    msg = protocol.pack_frame(0xDEADBEEF, b"\xff\xd8jpeg", is_crop=True)
    assert msg[:8] == struct.pack(">BBHI", 1, 1, 0, 0xDEADBEEF)  # the documented layout
    header, image = protocol.parse_frame(msg)
    assert header == protocol.FrameHeader(version=1, is_crop=True, frame_id=0xDEADBEEF)
    assert image == b"\xff\xd8jpeg"
    header, _ = protocol.parse_frame(protocol.pack_frame(7, b"x"))
    assert header.is_crop is False and header.frame_id == 7


def test_frame_id_wraps_to_uint32() -> None:
    header, _ = protocol.parse_frame(protocol.pack_frame(2**32 + 5, b"x"))
    assert header.frame_id == 5


def test_unknown_flags_and_reserved_are_ignored() -> None:
    header, image = protocol.parse_frame(struct.pack(">BBHI", 1, 0xFF, 0x1234, 9) + b"img")
    assert header.is_crop is True and header.frame_id == 9 and image == b"img"


@pytest.mark.parametrize(("message", "words"), [
    (b"", "0 bytes"),
    (b"\x01\x00\x00", "3 bytes"),
    (struct.pack(">BBHI", 2, 0, 0, 1) + b"img", "unknown protocol version 2"),
])
def test_unreadable_headers_raise(message: bytes, words: str) -> None:
    with pytest.raises(protocol.BadMessage, match=words):
        protocol.parse_frame(message)


def test_header_only_frame_has_empty_image() -> None:
    header, image = protocol.parse_frame(protocol.pack_frame(3, b""))
    assert header.frame_id == 3 and image == b""


def test_ok_reply_picks_top_and_is_json() -> None:
    body = protocol.ok(box=[1, 2, 3, 4], probs={"a": 0.2, "b": 0.7, "c": 0.1},
                       timings_ms=protocol.timings(decode=0.0021, total=0.0062), batch=3)
    reply = protocol.result(17, body)
    assert reply["type"] == "result" and reply["id"] == 17 and reply["status"] == "ok"
    assert reply["top"] == "b"
    assert reply["timings_ms"] == {"decode": 2.1, "total": 6.2}
    assert json.loads(json.dumps(reply)) == reply


def test_reply_builders_refuse_unknown_reasons_and_codes() -> None:
    assert protocol.dropped("superseded") == {"status": "dropped", "reason": "superseded"}
    with pytest.raises(ValueError, match="drop reason"):
        protocol.dropped("bored")
    assert protocol.error("bad", protocol.BAD_IMAGE)["code"] == "bad_image"
    with pytest.raises(ValueError, match="error code"):
        protocol.error("bad", "oops")


def test_hello_lists_limits() -> None:
    hello = protocol.hello(model="m", classes=["x", "y"], input_size=48, tta="mirror",
                           max_frame_bytes=1000, max_fps=30, suggested_fps=15, window=2)
    assert hello["type"] == "hello" and hello["protocol"] == protocol.PROTOCOL_VERSION
    assert hello["limits"] == {"max_frame_bytes": 1000, "max_fps": 30, "suggested_fps": 15,
                               "window": 2, "max_faces": protocol.MAX_FACES}


def test_a_face_id_travels_in_the_header_and_back_in_the_reply() -> None:
    """FLAG_FACE puts the face id in bytes 2-3; without it those bytes stay ignored, so a
    version-1 client that sends 0 there (or anything) names no face."""
    message = protocol.pack_frame(7, b"jpeg", is_crop=True, face_id=513)
    assert message[:4] == bytes([1, protocol.FLAG_CROP | protocol.FLAG_FACE, 2, 1])
    header, image = protocol.parse_frame(message)
    assert (header.frame_id, header.face_id, header.is_crop, image) == (7, 513, True, b"jpeg")
    assert protocol.parse_frame(protocol.pack_frame(7, b"x", face_id=0))[0].face_id == 0
    plain = protocol.pack_frame(8, b"x", is_crop=True)
    assert plain[1] == protocol.FLAG_CROP and protocol.parse_frame(plain)[0].face_id is None
    old_client = bytes([1, 1, 0xAB, 0xCD, 0, 0, 0, 9]) + b"x"  # reserved bytes, no flag
    assert protocol.parse_frame(old_client)[0].face_id is None
    for bad in (-1, protocol.MAX_FACE_ID + 1):
        with pytest.raises(ValueError, match="face_id"):
            protocol.pack_frame(1, b"x", face_id=bad)
    ok = protocol.ok(box=[0, 0, 1, 1], probs={"x": 1.0}, timings_ms={"total": 1.0}, batch=1)
    assert protocol.result(7, ok, 513)["face"] == 513
    assert "face" not in protocol.result(8, ok)


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_the_pages_protocol_js_says_what_the_server_sends() -> None:
    """web/protocol.js (under node), the page's one copy of the wire format, against this
    module: message types, statuses, drop reasons, error codes, the header, and the limits
    the page assumes before a greeting (a default server's)."""
    script = """
      import * as p from "./web/protocol.js";
      const frame = p.packFrame(0xDEADBEEF, true, new Uint8Array([1, 2, 3]), 513);
      console.log(JSON.stringify({
        MESSAGE: p.MESSAGE, STATUS: p.STATUS, DROP_REASON: p.DROP_REASON,
        ERROR_CODE: p.ERROR_CODE, PROTOCOL_VERSION: p.PROTOCOL_VERSION, FLAG_CROP: p.FLAG_CROP,
        FLAG_FACE: p.FLAG_FACE, MAX_FACE_ID: p.MAX_FACE_ID, HEADER_BYTES: p.HEADER_BYTES,
        DEFAULT_LIMITS: p.DEFAULT_LIMITS, frame: Array.from(new Uint8Array(frame)),
      }));
    """
    ran = subprocess.run(["node", "--input-type=module", "-e", script], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    js = json.loads(ran.stdout)
    for name, values in (("STATUS", protocol.STATUSES), ("DROP_REASON", protocol.DROP_REASONS),
                         ("ERROR_CODE", protocol.ERROR_CODES)):
        assert js[name] == {key: getattr(protocol, key) for key in js[name]}, name
        assert sorted(js[name].values()) == sorted(values), name
    greeting = protocol.hello(model="m", classes=["a"], input_size=48, tta="none",
                              max_frame_bytes=ServeConfig.max_frame_bytes,
                              max_fps=ServeConfig.max_fps,
                              suggested_fps=ServeConfig.suggested_fps, window=protocol.WINDOW)
    assert js["MESSAGE"] == {
        "HELLO": greeting["type"], "CLOSING": protocol.closing()["type"],
        "RESULT": protocol.result(1, protocol.dropped(protocol.SUPERSEDED))["type"]}
    assert js["DEFAULT_LIMITS"] == greeting["limits"]
    assert (js["PROTOCOL_VERSION"], js["FLAG_CROP"], js["FLAG_FACE"], js["MAX_FACE_ID"],
            js["HEADER_BYTES"]) == (protocol.PROTOCOL_VERSION, protocol.FLAG_CROP,
                                    protocol.FLAG_FACE, protocol.MAX_FACE_ID, protocol.HEADER.size)
    assert bytes(js["frame"]) == protocol.pack_frame(0xDEADBEEF, b"\x01\x02\x03", is_crop=True,
                                                     face_id=513)
