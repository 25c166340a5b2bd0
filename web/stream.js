// The WebSocket side of the page: connect, read the greeting, send frames inside the send
// window, match replies to frames, and reconnect with backoff when the socket drops.
// It knows nothing about cameras or faces, so a new detector or capture path never touches it.

import { packFrame, readLimits, DEFAULT_LIMITS, MESSAGE } from "./protocol.js";

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10000;
// The server answers every frame ("never silence"), but a reply lost with a dying socket
// must not hold a window slot forever, or the page would stop sending without a close event.
const REPLY_TIMEOUT_MS = 5000;

/**
 * Events (all CustomEvent, details in `event.detail`):
 *   "state"  {state: "connecting"|"open"|"reconnecting"|"closed", attempt, retryInMs}
 *   "hello"  {hello, limits}
 *   "result" {reply, rttMs, meta}   meta: whatever the caller passed to send() for that frame
 *   "lost"   {id, meta}             no reply within REPLY_TIMEOUT_MS
 */
export class StreamClient extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.limits = { ...DEFAULT_LIMITS };
    this.hello = null;
    this.socket = null;
    this.state = "closed";
    this.attempt = 0;
    this.nextId = 1;
    this.inflight = new Map(); // id -> {sentAt, meta}
    this.stopped = true;
    this._retryTimer = null;
    this._sweepTimer = null;
  }

  start() {
    this.stopped = false;
    this._sweepTimer = setInterval(() => this._sweep(), 1000);
    this._open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this._retryTimer);
    clearInterval(this._sweepTimer);
    if (this.socket) this.socket.close(1000, "page closed");
  }

  /**
   * True when a frame sent now would stay inside the server's send window: the window is
   * per face (`faceId`, null for frames that name none).
   */
  canSend(faceId = null) {
    if (this.state !== "open" || this.hello === null) return false;
    let unanswered = 0;
    for (const entry of this.inflight.values()) if (entry.faceId === faceId) unanswered += 1;
    return unanswered < this.limits.window;
  }

  /** Send one encoded image; returns its frame id, or null when the window is full. */
  send(image, isCrop, meta = {}, faceId = null) {
    if (!this.canSend(faceId)) return null;
    const id = this.nextId;
    this.nextId = (this.nextId + 1) >>> 0 || 1;
    this.inflight.set(id, { sentAt: performance.now(), meta, faceId });
    this.socket.send(packFrame(id, isCrop, image, faceId));
    return id;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, attempt: this.attempt, ...extra });
  }

  _open() {
    this.hello = null;
    this._setState(this.attempt ? "reconnecting" : "connecting", { retryInMs: 0 });
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch (err) {
      console.error("streamfer: cannot open", this.url, err);
      this._scheduleRetry();
      return;
    }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("message", (event) => this._onMessage(event));
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.hello = null;
      this.inflight.clear();
      if (this.stopped) this._setState("closed");
      else this._scheduleRetry();
    });
  }

  _scheduleRetry() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.8 + 0.4 * Math.random())); // jitter: no stampede
    this.attempt += 1;
    this._setState("reconnecting", { retryInMs: delay });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      if (!this.stopped) this._open();
    }, delay);
  }

  _onMessage(event) {
    if (typeof event.data !== "string") return; // the server only sends text
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      console.warn("streamfer: unreadable message", event.data);
      return;
    }
    if (msg.type === MESSAGE.HELLO) {
      this.hello = msg;
      this.limits = readLimits(msg);
      this.attempt = 0;
      this._setState("open");
      this._emit("hello", { hello: msg, limits: this.limits });
      return;
    }
    if (msg.type === MESSAGE.CLOSING) {
      // The server is shutting down: send nothing more (canSend needs a greeting); it answers
      // what was sent, closes, and the page reconnects as after any close.
      this.hello = null;
      return;
    }
    if (msg.type !== MESSAGE.RESULT) return;
    const pending = msg.id === null || msg.id === undefined ? undefined : this.inflight.get(msg.id);
    let rttMs = null;
    let meta = null;
    if (pending) {
      this.inflight.delete(msg.id);
      rttMs = performance.now() - pending.sentAt;
      meta = pending.meta;
    }
    this._emit("result", { reply: msg, rttMs, meta });
  }

  _sweep() {
    const now = performance.now();
    for (const [id, pending] of this.inflight) {
      if (now - pending.sentAt > REPLY_TIMEOUT_MS) {
        this.inflight.delete(id);
        this._emit("lost", { id, meta: pending.meta });
      }
    }
  }
}
