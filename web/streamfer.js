// The embeddable streamfer client: live facial expressions from a camera, in any page.
//
//   import { Streamfer } from "https://your-server:8080/streamfer.js";
//   const client = new Streamfer({ smoothing: true });
//   client.addEventListener("expression", (e) => console.log(e.detail.top, e.detail.probs));
//   await client.start(document.querySelector("video")); // or a MediaStream, or nothing
//
// docs/CLIENT.md is its guide. The page at / is built on this module alone. Inside: camera ->
// (in-page face check) -> crop -> socket -> probabilities. Pacing: at most `fps` frames a
// second, never more than the greeting's `window` unanswered, so a slow network or server
// costs frames, not latency.

import { CameraError, startCamera } from "./camera.js";
import { DARK_LEVEL, FrameGrabber, STILL_LEVEL } from "./capture.js";
import { chooseDetector, Fallback } from "./detectors.js";
import { DROP_REASON, MAX_FACE_ID, socketUrl, STATUS } from "./protocol.js";
import { argmax, ProbabilityEma } from "./smooth.js";
import { StreamClient } from "./stream.js";

export { CameraError } from "./camera.js";
export { DETECTOR_NAMES } from "./detectors.js";

const REFRESH_MS = 1000; // an unchanged scene is still re-sent this often, so results stay live
const IDLE_FPS = 5; // while no face is in view: keep looking, but spare the server and the battery
const RTT_SAMPLES = 15;
const DETECT_SAMPLES = 30;
const FPS_WINDOW_MS = 2000;
const SMOOTHING_MS = 300; // `smoothing: true`: the averaging's time constant
const PIPELINE_DEPTH = 2; // frames in the pipe at once when a Worker detects
// A face narrower than this share of the frame moves the 32x24 "unchanged" thumbnail too
// little to tell: while such a face is read, no frame is skipped as unchanged.
const SMALL_FACE_SHARE = 1 / 8;

/**
 * What `status` events say (`event.detail.state`), most urgent first when several hold:
 * the camera's own states, then the connection's, then what the camera shows.
 */
export const STATES = Object.freeze([
  "starting", "camera-error", "paused", "connecting", "reconnecting",
  "waiting", "streaming", "no-face", "too-dark",
]);

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
}

/** The server's base URL (ending in "/") from an option, or the folder this module came from. */
function serverBase(server) {
  const url = new URL(server ?? ".", import.meta.url);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

/**
 * A connection to a streamfer server and the camera it reads. Events (CustomEvent, data in
 * `event.detail`):
 *   "expression" {probs, raw, top, box, faceId, frameId, timings: {rttMs, detectMs, server}}
 *   "status"     {state, detail, connection: {state, attempt, retryInMs}}
 *   "error"      {kind: "camera"|"server"|"frame", code, message}
 *   "ready"      {model, classes, hello}          after every greeting (reconnects too)
 *   "detector"   {name, faces, thread, note}      which detector finds faces, and notes
 */
export class Streamfer extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.server] the server's URL (http/https); by default the server
   *   this module was loaded from
   * @param {number} [options.fps] frames a second to send (capped by the server); by default
   *   what the server suggests
   * @param {boolean|number} [options.smoothing] average probabilities over recent frames
   *   (true: 300 ms time constant; a number: that many ms; false: raw per-frame replies)
   * @param {string} [options.detector] "worker", "blazeface", "shape" or "server": try it first
   *   (by default they are tried in that order)
   * @param {boolean} [options.lifecycle] pause while the page is hidden and close the
   *   socket when it is left (default true)
   * @param {number} [options.maxFaces] faces to read per frame (default 1, the largest); more
   *   need a detector that tracks faces ("worker"): each gets its own id and replies
   */
  constructor(options = {}) {
    super();
    this.options = { lifecycle: true, ...options };
    this.server = serverBase(options.server);
    this.video = null;
    this.detector = null; // chosen once, after the first greeting (it says what is offered)
    this._socket = new StreamClient(socketUrl(this.server));
    this._grabber = new FrameGrabber();
    const tau = typeof options.smoothing === "number" ? options.smoothing : SMOOTHING_MS;
    this._ema = new ProbabilityEma(tau);
    this._smoothing = options.smoothing !== false && options.smoothing !== 0;
    this._tau = tau;
    this._emas = new Map(); // face id -> ProbabilityEma, while several faces are read
    this._ownStream = null; // a camera this client opened, stopped by stop()
    this._cameraReady = false;
    this._cameraError = null; // {message, kind} while the camera cannot be had
    this._face = "waiting"; // waiting | streaming | no-face | too-dark
    this._connection = { state: "closed", attempt: 0, retryInMs: 0 };
    this._connText = "";
    this._status = null;
    this._choosing = false;
    this._running = false;
    this._timer = null;
    this._steps = new Set(); // frame steps under way (see _loop)
    this._lastBox = null; // the face box of the last crop sent, else null
    this._lastSentAt = -Infinity;
    this._last = null; // the last expression event's detail, re-sent when smoothing changes
    this._rtts = [];
    this._detectMs = [];
    this._answeredAt = [];
    this.counts = {
      sent: 0, ok: 0, noFace: 0, dropped: 0, errors: 0, lost: 0,
      skippedDark: 0, skippedStill: 0, skippedNoFace: 0,
    };
    this._wire();
  }

  /** The server's greeting once connected (model, classes, limits), else null. */
  get hello() {
    return this._socket.hello;
  }

  /** The state the last `status` event named. */
  get state() {
    return this._status ? this._status.state : "starting";
  }

  /** Frames a second the client sends at now (fewer while no face is in view). */
  get fps() {
    return this._targetFps();
  }

  get smoothing() {
    return this._smoothing;
  }

  /** Turn smoothing on or off; the last expression is sent again, re-averaged. */
  set smoothing(on) {
    this._smoothing = Boolean(on);
    if (this._last) this._emitExpression(this._last.raw, this._last, this._lastEma);
  }

  /**
   * Start reading faces from `source`: a MediaStream, a <video> that plays something, or a
   * <video> without a source / nothing, for which the front camera is opened. Connects to the
   * server if not yet connected. Resolves once frames play; rejects with a CameraError (after
   * an "error" event) when the camera cannot be had, and may then be called again.
   */
  async start(source) {
    if (!this._running) this._connect();
    this._cameraReady = false;
    this._cameraError = null;
    this._setStatus("starting");
    try {
      this.video = await this._open(source);
    } catch (err) {
      const cameraErr = err instanceof CameraError ? err : new CameraError("failed", String(err));
      this._cameraError = { message: cameraErr.message, kind: cameraErr.kind };
      this._render();
      this._emit("error", { kind: "camera", code: cameraErr.kind, message: cameraErr.message });
      throw cameraErr;
    }
    this._cameraReady = true;
    this._render();
    return this.video;
  }

  /** Stop sending, close the socket and release a camera this client opened. */
  stop() {
    this._running = false;
    clearTimeout(this._timer);
    this._socket.stop();
    if (this._ownStream) for (const track of this._ownStream.getTracks()) track.stop();
    this._ownStream = null;
    this._cameraReady = false;
  }

  /**
   * Counters, the median round-trip time (ms), the detector's median wall time per frame as
   * the client waits for it (ms; in a Worker the frame's grab and transfer too) and answered
   * frames a second, right now.
   */
  stats() {
    const now = performance.now();
    while (this._answeredAt.length && now - this._answeredAt[0] > FPS_WINDOW_MS) {
      this._answeredAt.shift();
    }
    return {
      counts: { ...this.counts },
      rttMs: median(this._rtts),
      detectMs: median(this._detectMs),
      fps: (this._answeredAt.length * 1000) / FPS_WINDOW_MS,
    };
  }

  // ---- setup -------------------------------------------------------------------------------

  _wire() {
    const socket = this._socket;
    socket.addEventListener("hello", (event) => this._onHello(event.detail.hello));
    socket.addEventListener("result", (event) => this._onResult(event.detail));
    socket.addEventListener("lost", () => {
      this.counts.lost += 1;
    });
    socket.addEventListener("state", (event) => this._onConnection(event.detail));
    if (this.options.lifecycle && typeof document !== "undefined") {
      document.addEventListener("visibilitychange", () => this._render());
      // Leaving the page closes the socket cleanly (1000), so the server frees the slot at
      // once instead of waiting for its heartbeat; a page restored from the back-forward
      // cache opens a new one.
      window.addEventListener("pagehide", () => this._socket.stop());
      window.addEventListener("pageshow", (event) => {
        if (event.persisted && this._running) this._socket.start();
      });
    }
  }

  _connect() {
    this._running = true;
    this._socket.start();
    this._loop();
  }

  async _open(source) {
    if (typeof MediaStream !== "undefined" && source instanceof MediaStream) {
      const video = this.video || document.createElement("video");
      video.muted = true; // iOS Safari plays inline only when muted and playsinline
      video.setAttribute("playsinline", "");
      video.srcObject = source;
      await video.play();
      return video;
    }
    const video = source || this.video || document.createElement("video");
    if (video.srcObject || video.currentSrc || video.src) {
      if (video.paused) await video.play();
      return video;
    }
    this._ownStream = await startCamera(video);
    return video;
  }

  // ---- state -------------------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setStatus(state, detail = "", code = "") {
    const same = this._status && this._status.state === state && this._status.detail === detail;
    if (same) return;
    this._status = { state, detail, code, connection: { ...this._connection } };
    this._emit("status", this._status);
  }

  _render() {
    const err = this._cameraError; // stays until start() is called again
    if (err) this._setStatus("camera-error", err.message, err.kind);
    else if (!this._cameraReady) this._setStatus("starting");
    else if (typeof document !== "undefined" && document.hidden) this._setStatus("paused");
    else if (this._socket.state === "reconnecting") this._setStatus("reconnecting", this._connText);
    else if (this._socket.state !== "open") this._setStatus("connecting");
    else this._setStatus(this._face);
  }

  _setFace(face) {
    this._face = face;
    if (face !== "streaming") {
      this._ema.reset();
      this._emas.clear();
    }
    this._render();
  }

  _targetFps() {
    const limits = this._socket.limits;
    const fps = Math.min(Number(this.options.fps) || limits.suggested_fps, limits.max_fps);
    return this._face === "no-face" ? Math.min(fps, IDLE_FPS) : fps;
  }

  // ---- sending -----------------------------------------------------------------------------

  async _step() {
    const video = this.video;
    if (!this._cameraReady || !video || !this._socket.canSend() || video.readyState < 2) return;
    if (typeof document !== "undefined" && document.hidden) return;
    if (!this.detector) return; // still loading: nothing is sent until the client knows how
    const measured = this._grabber.measure(video);
    if (measured.mean < DARK_LEVEL) {
      this.counts.skippedDark += 1;
      this._grabber.forget();
      if (this._face !== "too-dark") this._setFace("too-dark");
      return;
    }
    const now = performance.now();
    const small = this._lastBox && this._lastBox.w < SMALL_FACE_SHARE * video.videoWidth;
    if (!small && measured.change < STILL_LEVEL && now - this._lastSentAt < REFRESH_MS) {
      this.counts.skippedStill += 1;
      return;
    }
    const detectStart = performance.now();
    const found = await this.detector.detect(video);
    const detectMs = performance.now() - detectStart;
    this._detectMs.push(detectMs);
    if (this._detectMs.length > DETECT_SAMPLES) this._detectMs.shift();
    this._detectorEvent(found ? found.faces : 0);
    if (found === null) {
      this.counts.skippedNoFace += 1;
      if (this._face !== "no-face") this._setFace("no-face");
      return;
    }
    const framesSent = found ? await this._sendFaces(video, found, detectMs)
      : await this._sendFull(video);
    if (!framesSent) return;
    this._grabber.accept(measured);
    this._lastBox = found ? found.box : null;
    this._lastSentAt = now;
    this.counts.sent += framesSent;
    if (this._face === "too-dark") this._setFace("waiting");
  }

  /** How many faces a frame may send: the option, within the server's limit. */
  _maxFaces() {
    const wanted = Math.max(1, Math.floor(Number(this.options.maxFaces) || 1));
    return Math.min(wanted, this._socket.limits.max_faces);
  }

  /**
   * Send the crop of the face read (or, with maxFaces > 1 and a tracking detector, of each
   * face in view, named by its tracking id on the wire); returns how many went out.
   */
  async _sendFaces(video, found, detectMs) {
    const several = this._maxFaces() > 1 && Array.isArray(found.all) &&
      found.all.every((f) => f.id !== null);
    const faces = several ? found.all.slice(0, this._maxFaces()) : [found];
    let sent = 0;
    for (const face of faces) {
      const wireId = several ? face.id & MAX_FACE_ID : null;
      if (!this._socket.canSend(wireId)) continue;
      // A crop the Worker cut from the frame it detected on is sent as it is: no drawing,
      // reading back or encoding on the main thread.
      const bytes = face.crop ||
        (await this._grabber.faceCrop(video, face.box, this.detector.framing)).bytes;
      if (!this._fits(bytes)) continue;
      const meta = { faceBox: face.box, faceId: face.id ?? null, several, detectMs };
      if (this._socket.send(bytes, true, meta, wireId) !== null) sent += 1;
    }
    return sent;
  }

  async _sendFull(video) {
    const frame = await this._grabber.fullFrame(video);
    if (!this._fits(frame.bytes)) return 0;
    const meta = { scale: frame.scale, faceId: null, several: false, detectMs: null };
    return this._socket.send(frame.bytes, false, meta) === null ? 0 : 1;
  }

  _fits(bytes) {
    if (bytes.byteLength <= this._socket.limits.max_frame_bytes) return true;
    console.warn(`streamfer: frame of ${bytes.byteLength} bytes is over the server's limit`);
    return false;
  }

  // Frames are pipelined when detection runs in a Worker: the next frame is grabbed and
  // handed to it while this one is still detected, cropped and sent, so the Worker is never
  // idle waiting for the page. At most `_depth()` frames are in the pipe; replies still
  // respect the server's window (a frame that finds it full is not sent).
  _depth() {
    return this.detector && this.detector.thread === "worker" ? PIPELINE_DEPTH : 1;
  }

  async _loop() {
    if (!this._running) return;
    const started = performance.now();
    const step = this._step().catch((err) => {
      console.error("streamfer: frame step failed", err);
      this._emit("error", { kind: "frame", code: "step", message: String(err.message || err) });
    }).finally(() => this._steps.delete(step));
    this._steps.add(step);
    while (this._steps.size >= this._depth()) await Promise.race(this._steps);
    const wait = Math.max(0, 1000 / this._targetFps() - (performance.now() - started));
    if (this._running) this._timer = setTimeout(() => this._loop(), wait);
  }

  // ---- the detector ------------------------------------------------------------------------

  _detectorEvent(faces = 0, note = "") {
    const name = this.detector ? this.detector.name : "loading";
    const thread = this.detector ? this.detector.thread : null;
    if (typeof document !== "undefined") {
      // Tests (and curious people) read where detection runs from the page.
      if (thread) document.documentElement.dataset.detectorThread = thread;
      else delete document.documentElement.dataset.detectorThread;
    }
    this._emit("detector", { name, faces, thread, note });
  }

  // Detection runs in _step(), so only at the send rate (or the idle rate) and one frame at a
  // time: a slow detector costs frames, never the video (which plays on the browser's own
  // threads) or the page's responsiveness between frames.
  async _startDetector(hello) {
    this._choosing = true;
    this._detectorEvent();
    const note = (message) => this._detectorEvent(0, message);
    const chosen = await chooseDetector(hello, this.options.detector, note, this.server);
    this.detector = chosen.name === "server" ? chosen : new Fallback(chosen, (message) => {
      this._detectorEvent(0, message);
    });
    this._detectorEvent();
  }

  // ---- replies -----------------------------------------------------------------------------

  _onHello(hello) {
    this._last = null;
    this._ema.reset();
    this._emit("ready", { model: hello.model, classes: hello.classes, hello });
    if (!this.detector && !this._choosing) this._startDetector(hello);
  }

  _emitExpression(raw, base, ema) {
    const probs = this._smoothing ? ema.value ?? raw : raw;
    this._last = { ...base, raw, probs, top: argmax(probs) };
    this._lastEma = ema;
    this._emit("expression", this._last);
  }

  /** The smoothing for one reply: per face while several are read. */
  _emaFor(meta) {
    if (!meta || !meta.several) return this._ema;
    let ema = this._emas.get(meta.faceId);
    if (!ema) {
      if (this._emas.size >= 4 * this._maxFaces()) this._emas.delete(this._emas.keys().next().value);
      ema = new ProbabilityEma(this._tau);
      this._emas.set(meta.faceId, ema);
    }
    return ema;
  }

  _onResult({ reply, rttMs, meta }) {
    if (rttMs !== null) {
      this._rtts.push(rttMs);
      if (this._rtts.length > RTT_SAMPLES) this._rtts.shift();
    }
    switch (reply.status) {
      case STATUS.OK: {
        this.counts.ok += 1;
        this._answeredAt.push(performance.now());
        const ema = this._emaFor(meta);
        ema.update(reply.probs);
        this._face = "streaming";
        this._render();
        let box = null;
        if (meta && meta.faceBox) box = meta.faceBox;
        else if (meta && reply.box) {
          const [x, y, w, h] = reply.box.map((v) => v * meta.scale);
          box = { x, y, w, h };
        }
        this._emitExpression(reply.probs, {
          box,
          faceId: meta ? meta.faceId : null,
          frameId: reply.id,
          timings: { rttMs, detectMs: meta ? meta.detectMs : null, server: reply.timings_ms },
        }, ema);
        break;
      }
      case STATUS.NO_FACE:
        this.counts.noFace += 1;
        this._answeredAt.push(performance.now());
        this._setFace("no-face");
        break;
      case STATUS.DROPPED:
        this.counts.dropped += 1; // SUPERSEDED is normal flow control; the rest are rare
        if (reply.reason !== DROP_REASON.SUPERSEDED) console.info("streamfer: frame dropped:", reply.reason);
        break;
      case STATUS.ERROR:
        this.counts.errors += 1;
        console.warn("streamfer: server error:", reply.error);
        this._emit("error", { kind: "server", code: reply.code, message: reply.error });
        break;
      default:
        console.warn("streamfer: unknown reply", reply);
    }
  }

  _onConnection({ state, attempt, retryInMs = 0 }) {
    this._connection = { state, attempt, retryInMs };
    if (state === "open") this._connText = "";
    else if (state === "reconnecting") {
      if (this._face === "streaming") this._setFace("waiting"); // the last result is now old
      const secs = (retryInMs / 1000).toFixed(1);
      this._connText = retryInMs
        ? `Connection lost — retrying in ${secs} s (attempt ${attempt})`
        : `Connection lost — reconnecting (attempt ${attempt})…`;
    }
    this._status = null; // the connection is part of every status: say it again
    this._render();
  }
}
