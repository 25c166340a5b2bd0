"""The WebSocket wire format (docs/PROTOCOL.md): the frame header and the JSON replies.

Kept apart from the server so the page, the load test and the tests can share one definition
of what goes over the wire; every reply the server sends is built here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BBHI")  # version, flags, face id (reserved without FLAG_FACE), frame id
FLAG_CROP = 0x01
FLAG_FACE = 0x02  # bytes 2-3 carry the face id: the client's name for one face across frames
MAX_FACE_ID = 0xFFFF
WINDOW = 2  # frames a client may keep unanswered per face: one in flight, one waiting
# Faces one connection may stream at once (each with its own window and frame-rate budget);
# a frame for a further face id takes the slot of the face least recently sent whose
# frames are all answered, else it is dropped "overloaded" (the greeting's limits.max_faces).
MAX_FACES = 4
# The stages a reply's `timings_ms` may name, in the order a frame meets them.
TIMING_KEYS = ("decode", "track", "detect", "queue", "inference", "total")

# A reply's `status`: a face's probabilities, no face in the image, no result (a `reason`,
# below), or an error (a `code`, below).
OK = "ok"
NO_FACE = "no_face"
DROPPED = "dropped"
ERROR = "error"
STATUSES = (OK, NO_FACE, DROPPED, ERROR)

# Why a frame got no result (`status: "dropped"`, `reason`).
SUPERSEDED = "superseded"
OVERLOADED = "overloaded"
DEADLINE = "deadline"
RATE_LIMITED = "rate_limited"
SHUTTING_DOWN = "shutting_down"
DROP_REASONS = (SUPERSEDED, OVERLOADED, DEADLINE, RATE_LIMITED, SHUTTING_DOWN)

# What kind of error (`status: "error"`, `code`): a client can act on these without parsing
# the human-readable `error` message.
BAD_MESSAGE = "bad_message"  # no readable header: empty, short, text, unknown version
TOO_LARGE = "too_large"
BAD_IMAGE = "bad_image"
INTERNAL = "internal"
NO_DETECTOR = "no_detector"  # a full frame, but this server cannot detect faces
ERROR_CODES = (BAD_MESSAGE, TOO_LARGE, BAD_IMAGE, INTERNAL, NO_DETECTOR)

# WebSocket close code for a client that floods or keeps sending what is not a frame
# (RFC 6455 1008, policy violation); the close reason says which. A client should not
# reconnect at once: what it sent will be refused again.
CLOSE_ABUSE = 1008
BAD_MESSAGES_PER_S = 2.0  # messages that are not frames, forgiven per second ...
BAD_MESSAGES_BURST = 20  # ... beyond this many in a row: closed with CLOSE_ABUSE
# Every message (frame, ping, text, ...) counts: more than this many times the frame-rate
# cap per second (MESSAGES_UNCAPPED without a cap), over a second's burst, closes it too.
MESSAGES_PER_FRAME = 4
MESSAGES_UNCAPPED = 1000.0


class BadMessage(ValueError):
    """A WebSocket message that is not a frame: its reply carries `"id": null`."""


@dataclass(frozen=True)
class FrameHeader:
    version: int
    is_crop: bool
    frame_id: int
    face_id: int | None = None  # None: a frame without FLAG_FACE (one face, or a full frame)


def pack_frame(frame_id: int, image: bytes, *, is_crop: bool = False,
               face_id: int | None = None) -> bytes:
    """One binary message: the 8-byte header, then the encoded image. `face_id` (0-65535)
    names the face a crop shows, for a client that streams several faces."""
    if face_id is not None and not 0 <= face_id <= MAX_FACE_ID:
        raise ValueError(f"face_id must be within 0..{MAX_FACE_ID}, not {face_id}")
    flags = (FLAG_CROP if is_crop else 0) | (FLAG_FACE if face_id is not None else 0)
    return HEADER.pack(PROTOCOL_VERSION, flags, face_id or 0, frame_id & 0xFFFFFFFF) + image


def parse_frame(message: bytes) -> tuple[FrameHeader, bytes]:
    """Split a binary message into its header and image bytes, or raise BadMessage.

    Unknown flag bits are ignored, and bytes 2-3 too unless FLAG_FACE is set, so a later
    minor revision can use them without breaking version-1 servers.
    """
    if len(message) < HEADER.size:
        raise BadMessage(
            f"message of {len(message)} bytes is shorter than the {HEADER.size}-byte frame header"
        )
    version, flags, face, frame_id = HEADER.unpack_from(message)
    if version != PROTOCOL_VERSION:
        raise BadMessage(
            f"unknown protocol version {version}; this server speaks version {PROTOCOL_VERSION}"
        )
    face_id = face if flags & FLAG_FACE else None
    return FrameHeader(version, bool(flags & FLAG_CROP), frame_id, face_id), message[HEADER.size:]


def hello(*, model: str, classes: list[str], input_size: int, tta: str, max_frame_bytes: int,
          max_fps: float, suggested_fps: float, window: int,
          framing: dict[str, dict[str, float]] | None = None,
          page_detector: dict[str, Any] | None = None) -> dict[str, Any]:
    """The greeting sent first on every connection.

    `framing` (detector name -> {scale, shift_y}, streamfer.faces.FRAMING) tells a page how to
    cut a crop from its detector's box exactly as the training faces were framed;
    `page_detector` (streamfer.server.vendor) says where the in-page detector's files are, or is
    None when this server has none installed.
    """
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "model": model,
        "classes": classes,
        "input_size": input_size,
        "tta": tta,
        "limits": {"max_frame_bytes": max_frame_bytes, "max_fps": max_fps,
                   "suggested_fps": suggested_fps, "window": window, "max_faces": MAX_FACES},
        "framing": framing or {},
        "page_detector": page_detector,
    }


def result(frame_id: int | None, body: dict[str, Any],
           face_id: int | None = None) -> dict[str, Any]:
    """A streamed reply: `body` (from ok/no_face/dropped/error) with the echoed frame id, and
    the echoed face id (`face`) when the frame named one."""
    reply = {"type": "result", "id": frame_id, **body}
    if face_id is not None:
        reply["face"] = face_id
    return reply


def closing() -> dict[str, Any]:
    """Sent once when the server begins a graceful shutdown: send no more frames. Frames
    already sent are still answered; then the server closes the socket (1001). Without it a
    frame on the wire when the server's close frame goes out could get no reply at all: after
    a close frame WebSocket allows no more messages (RFC 6455, 5.5.1)."""
    return {"type": "closing"}


def timings(**seconds: float) -> dict[str, float]:
    """Stage durations in seconds -> the reply's `timings_ms` (0.01 ms resolution)."""
    return {name: round(s * 1000.0, 2) for name, s in seconds.items()}


def ok(*, box: list[int], probs: dict[str, float], timings_ms: dict[str, float],
       batch: int) -> dict[str, Any]:
    top = max(probs, key=probs.__getitem__)
    return {"status": OK, "box": box, "probs": probs, "top": top, "timings_ms": timings_ms,
            "batch": batch}


def no_face(*, timings_ms: dict[str, float]) -> dict[str, Any]:
    return {"status": NO_FACE, "timings_ms": timings_ms}


def dropped(reason: str) -> dict[str, Any]:
    if reason not in DROP_REASONS:
        raise ValueError(f"unknown drop reason {reason!r}")
    return {"status": DROPPED, "reason": reason}


def error(message: str, code: str) -> dict[str, Any]:
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return {"status": ERROR, "code": code, "error": message}
