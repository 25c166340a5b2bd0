// The page's main loop: camera -> (in-page face check) -> frame -> socket -> bars.
// Pacing: at most `suggested_fps` frames a second, never more than the greeting's `window`
// unanswered, so a slow network or server costs frames, not latency.

import { CameraError, startCamera } from "./camera.js";
import { DARK_LEVEL, FrameGrabber, STILL_LEVEL } from "./capture.js";
import { chooseDetector, Fallback } from "./detectors.js";
import { socketUrl } from "./protocol.js";
import { argmax, ProbabilityEma } from "./smooth.js";
import { StreamClient } from "./stream.js";
import { download, drawChart, Timeline } from "./timeline.js";
import { colourFor, View } from "./view.js";

const REFRESH_MS = 1000; // an unchanged scene is still re-sent this often, so the page stays live
const IDLE_FPS = 5; // while no face is in view: keep looking, but spare the server and the battery
const RTT_SAMPLES = 15;
const DETECT_SAMPLES = 30;
const FPS_WINDOW_MS = 2000;
const SMOOTH_KEY = "streamfer.smooth";
const CAMERA_STATUS = { insecure: "Needs HTTPS", denied: "Camera blocked", missing: "No camera" };

const params = new URLSearchParams(location.search);
const view = new View();
const video = view.video;
const grabber = new FrameGrabber();
const ema = new ProbabilityEma();
const client = new StreamClient(socketUrl());
const smoothBox = document.getElementById("smooth");
const timeline = new Timeline(); // the live recording: in this page's memory only

const state = {
  cameraReady: false,
  face: "waiting", // waiting | streaming | no-face | too-dark
  connText: "",
  detector: null, // chosen once, after the first greeting (it says what the server offers)
  choosing: false,
  lastSentAt: -Infinity,
  lastRaw: null, // last "ok" reply's probabilities, to redraw when smoothing is toggled
  rtts: [],
  detectMs: [],
  answeredAt: [],
  counts: {
    sent: 0, ok: 0, noFace: 0, dropped: 0, errors: 0, lost: 0,
    skippedDark: 0, skippedStill: 0, skippedNoFace: 0,
  },
};

function targetFps() {
  const wanted = Number(params.get("fps")) || client.limits.suggested_fps;
  const fps = Math.min(wanted, client.limits.max_fps);
  return state.face === "no-face" ? Math.min(fps, IDLE_FPS) : fps;
}

function render() {
  if (!state.cameraReady) return; // the camera's own states are set where they happen
  if (document.hidden) view.setStatus("paused");
  else if (client.state === "reconnecting") view.setStatus("reconnecting", state.connText);
  else if (client.state !== "open") view.setStatus("connecting");
  else view.setStatus(state.face);
}

function setFace(face) {
  state.face = face;
  if (face !== "streaming") {
    ema.reset();
    view.markStale();
    view.drawBox(null);
  }
  render();
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
}

function scaled(box, scale = 1) {
  return box ? { x: box[0] * scale, y: box[1] * scale, w: box[2] * scale, h: box[3] * scale } : null;
}

function showTimeline() {
  drawChart(document.getElementById("timeline-chart"), timeline, colourFor);
  document.getElementById("download-csv").dataset.rows = String(timeline.length);
}

function showTiming() {
  const now = performance.now();
  while (state.answeredAt.length && now - state.answeredAt[0] > FPS_WINDOW_MS) state.answeredAt.shift();
  view.showTiming(median(state.rtts), (state.answeredAt.length * 1000) / FPS_WINDOW_MS);
  view.showCounts(state.counts);
}

function showProbs() {
  if (!state.lastRaw) return;
  const probs = smoothBox.checked ? ema.value ?? state.lastRaw : state.lastRaw;
  view.showProbs(probs, argmax(probs));
}

// ---- sending -------------------------------------------------------------------------------

// The detector's recent wall time per frame as the page waits for it (in a Worker: the frame
// grab, the transfer and the answer too), median of the last DETECT_SAMPLES, in
// <html data-detect-ms>: for benchmarks (bench/page_stream.py) and the curious.
function noteDetectMs(ms) {
  state.detectMs.push(ms);
  if (state.detectMs.length > DETECT_SAMPLES) state.detectMs.shift();
  document.documentElement.dataset.detectMs = median(state.detectMs).toFixed(1);
}

async function step() {
  if (!state.cameraReady || document.hidden || !client.canSend() || video.readyState < 2) return;
  if (!state.detector) return; // still loading: nothing is sent until the page knows how
  const measured = grabber.measure(video);
  if (measured.mean < DARK_LEVEL) {
    state.counts.skippedDark += 1;
    grabber.forget();
    if (state.face !== "too-dark") setFace("too-dark");
    return;
  }
  const now = performance.now();
  if (measured.change < STILL_LEVEL && now - state.lastSentAt < REFRESH_MS) {
    state.counts.skippedStill += 1;
    return;
  }
  const t0 = performance.now();
  const found = await state.detector.detect(video);
  noteDetectMs(performance.now() - t0);
  view.setDetector(state.detector.name, found ? found.faces : 0);
  if (found === null) {
    state.counts.skippedNoFace += 1;
    if (state.face !== "no-face") setFace("no-face");
    return;
  }
  let frame;
  let meta;
  if (found) {
    frame = await grabber.faceCrop(video, found.box, state.detector.framing);
    meta = { faceBox: found.box };
  } else {
    frame = await grabber.fullFrame(video);
    meta = { scale: frame.scale };
  }
  if (frame.bytes.byteLength > client.limits.max_frame_bytes) {
    console.warn(`streamfer: frame of ${frame.bytes.byteLength} bytes is over the server's limit`);
    return;
  }
  if (client.send(frame.bytes, Boolean(found), meta) === null) return; // window filled meanwhile
  grabber.accept(measured);
  state.lastSentAt = now;
  state.counts.sent += 1;
  if (state.face === "too-dark") setFace("waiting");
}

async function loop() {
  const started = performance.now();
  try {
    await step();
  } catch (err) {
    console.error("streamfer: frame step failed", err);
  }
  const wait = Math.max(0, 1000 / targetFps() - (performance.now() - started));
  setTimeout(loop, wait);
}

// ---- replies -------------------------------------------------------------------------------

function onResult(event) {
  const { reply, rttMs, meta } = event.detail;
  if (rttMs !== null) {
    state.rtts.push(rttMs);
    if (state.rtts.length > RTT_SAMPLES) state.rtts.shift();
  }
  switch (reply.status) {
    case "ok": {
      state.counts.ok += 1;
      state.answeredAt.push(performance.now());
      state.lastRaw = reply.probs;
      ema.update(reply.probs);
      timeline.add(reply.probs, meta?.faceBox ?? scaled(reply.box, meta?.scale), reply.id);
      state.face = "streaming";
      render();
      showProbs();
      if (meta && meta.faceBox) view.drawBox(meta.faceBox);
      else if (meta && reply.box) {
        const [x, y, w, h] = reply.box.map((v) => v * meta.scale);
        view.drawBox({ x, y, w, h });
      }
      view.showHelp("");
      break;
    }
    case "no_face":
      state.counts.noFace += 1;
      state.answeredAt.push(performance.now());
      setFace("no-face");
      break;
    case "dropped":
      state.counts.dropped += 1; // "superseded" is normal flow control; the rest are rare
      if (reply.reason !== "superseded") console.info("streamfer: frame dropped:", reply.reason);
      break;
    case "error":
      state.counts.errors += 1;
      console.warn("streamfer: server error:", reply.error);
      view.showHelp(`Server: ${reply.error}`, "error");
      break;
    default:
      console.warn("streamfer: unknown reply", reply);
  }
  showTiming();
}

function onConnection(event) {
  const { state: conn, attempt, retryInMs } = event.detail;
  if (conn === "open") {
    state.connText = "";
    view.setConnection("open", "online");
  } else if (conn === "reconnecting") {
    if (state.face === "streaming") setFace("waiting"); // the last prediction is now old
    const secs = (retryInMs / 1000).toFixed(1);
    state.connText = retryInMs
      ? `Connection lost — retrying in ${secs} s (attempt ${attempt})`
      : `Connection lost — reconnecting (attempt ${attempt})…`;
    view.setConnection("reconnecting", retryInMs ? `retry in ${secs} s` : "reconnecting…");
  } else {
    view.setConnection(conn, conn === "connecting" ? "connecting…" : conn);
  }
  view.conn.dataset.attempt = String(attempt);
  render();
}

// ---- settings ------------------------------------------------------------------------------

// The smoothing choice survives reloads; storage can be off (private modes), which is fine.
function remembered() {
  try {
    return localStorage.getItem(SMOOTH_KEY);
  } catch {
    return null;
  }
}

function remember(value) {
  try {
    localStorage.setItem(SMOOTH_KEY, value);
  } catch {
    /* not stored: the toggle still works for this visit */
  }
}

// ---- start ---------------------------------------------------------------------------------

async function startVideo() {
  view.setStatus("starting");
  view.showHelp("");
  document.getElementById("retry").hidden = true;
  try {
    await startCamera(video);
  } catch (err) {
    const kind = err instanceof CameraError ? err.kind : "failed";
    view.setStatus("camera-error", CAMERA_STATUS[kind] || "Camera unavailable");
    view.showHelp(err.message || String(err), kind);
    document.getElementById("retry").hidden = kind === "insecure" || kind === "unsupported";
    return;
  }
  state.cameraReady = true;
  render();
}

// Detection runs in step(), so only at the send rate (or the idle rate) and one frame at a
// time: a slow detector costs frames, never the video (which plays on the browser's own
// threads) or the page's responsiveness between frames.
async function startDetector(hello) {
  state.choosing = true;
  view.setDetector("loading");
  const note = (message) => view.addDetectorNote(message);
  const chosen = await chooseDetector(hello, params.get("detector"), note);
  state.detector = chosen.name === "server" ? chosen : new Fallback(chosen, (message) => {
    note(message);
    view.setDetector(state.detector.name);
    document.documentElement.dataset.detectorThread = state.detector.thread;
  });
  view.setDetector(state.detector.name);
  document.documentElement.dataset.detectorThread = state.detector.thread;
}

function main() {
  smoothBox.checked = params.has("smooth") ? params.get("smooth") !== "0" : remembered() !== "0";
  smoothBox.addEventListener("change", () => {
    remember(smoothBox.checked ? "1" : "0");
    showProbs();
  });
  document.getElementById("retry").addEventListener("click", startVideo);
  document.addEventListener("visibilitychange", render);
  // Leaving the page closes the socket cleanly (1000), so the server frees the slot at once
  // instead of waiting for its heartbeat; a page restored from the back-forward cache opens a
  // new one.
  window.addEventListener("pagehide", () => client.stop());
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) client.start();
  });
  window.addEventListener("resize", () => view.drawBox(null));

  client.addEventListener("hello", (event) => {
    const { hello } = event.detail;
    view.buildBars(hello.classes);
    if (timeline.classes.join() !== hello.classes.join()) timeline.reset(hello.classes, targetFps());
    view.setModel(hello);
    if (!state.detector && !state.choosing) startDetector(hello);
    state.lastRaw = null;
    ema.reset();
  });
  client.addEventListener("result", onResult);
  client.addEventListener("lost", () => {
    state.counts.lost += 1;
  });
  client.addEventListener("state", onConnection);
  client.start();
  showTiming(); // the counters exist from the start, not only after the first tick
  setInterval(showTiming, 500);
  setInterval(showTimeline, 1000);
  document.getElementById("download-csv").addEventListener("click", () =>
    download(timeline.toCsv(), `streamfer-${new Date().toISOString().replace(/[:.]/g, "-")}.csv`));

  startVideo();
  loop();
}

main();
