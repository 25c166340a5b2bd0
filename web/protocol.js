// The wire format of docs/PROTOCOL.md (version 1), and nothing else: kept apart so the
// streaming code and any test page share one definition of the 8-byte frame header.

export const PROTOCOL_VERSION = 1;
export const FLAG_CROP = 1; // bit 0: the image is already a face crop (server skips detection)
export const FLAG_FACE = 2; // bit 1: bytes 2-3 carry the face id (echoed as the reply's `face`)
export const MAX_FACE_ID = 0xffff;
export const HEADER_BYTES = 8;

// The server's messages (`type`), a result's `status`, a dropped frame's `reason` and an
// error's `code`: the values streamfer/protocol.py sends (tests/test_protocol.py compares them).
export const MESSAGE = Object.freeze({ HELLO: "hello", RESULT: "result", CLOSING: "closing" });
export const STATUS = Object.freeze({
  OK: "ok",
  NO_FACE: "no_face",
  DROPPED: "dropped",
  ERROR: "error",
});
export const DROP_REASON = Object.freeze({
  SUPERSEDED: "superseded", // normal flow control: a newer frame of the same face took its place
  OVERLOADED: "overloaded",
  DEADLINE: "deadline",
  RATE_LIMITED: "rate_limited",
  SHUTTING_DOWN: "shutting_down",
});
export const ERROR_CODE = Object.freeze({
  BAD_MESSAGE: "bad_message",
  TOO_LARGE: "too_large",
  BAD_IMAGE: "bad_image",
  INTERNAL: "internal",
  NO_DETECTOR: "no_detector",
});

// What the page assumes until the server's greeting says otherwise.
export const DEFAULT_LIMITS = Object.freeze({
  max_frame_bytes: 262144,
  max_fps: 30,
  suggested_fps: 15,
  window: 2, // frames unanswered, per face
  max_faces: 4, // faces one connection may stream at once
});

/**
 * Header + encoded image in one ArrayBuffer, ready for WebSocket.send(); `faceId` (0-65535,
 * or null for none) names the face a crop shows.
 */
export function packFrame(id, isCrop, image, faceId = null) {
  const body = new Uint8Array(image);
  const out = new Uint8Array(HEADER_BYTES + body.byteLength);
  const view = new DataView(out.buffer);
  view.setUint8(0, PROTOCOL_VERSION);
  const hasFace = faceId !== null && faceId !== undefined;
  view.setUint8(1, (isCrop ? FLAG_CROP : 0) | (hasFace ? FLAG_FACE : 0));
  view.setUint16(2, hasFace ? faceId & MAX_FACE_ID : 0);
  view.setUint32(4, id >>> 0);
  out.set(body, HEADER_BYTES);
  return out.buffer;
}

/** ws:// beside an http page, wss:// beside an https one (browsers block mixed content). */
export function socketUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  const base = loc.pathname.replace(/[^/]*$/, ""); // the page's folder: works behind a prefix
  return `${scheme}//${loc.host}${base}ws`;
}

/** The greeting's limits merged over the defaults, with nonsense values ignored. */
export function readLimits(hello) {
  const limits = { ...DEFAULT_LIMITS };
  const given = (hello && hello.limits) || {};
  for (const key of Object.keys(limits)) {
    const value = Number(given[key]);
    if (Number.isFinite(value) && value > 0) limits[key] = value;
  }
  limits.window = Math.max(1, Math.floor(limits.window));
  limits.max_faces = Math.max(1, Math.floor(limits.max_faces));
  return limits;
}
