// The demo page: the public client (streamfer.js) drawn by view.js, and nothing else.
// `?detector=NAME`, `?fps=N`, `?faces=N` (faces read at once, each boxed with its
// expression) and `?smooth=0|1` set the client's options.

import { Streamfer } from "./streamfer.js";
import { download, drawChart, Timeline } from "./timeline.js";
import { colourFor, View } from "./view.js";

const SMOOTH_KEY = "streamfer.smooth";
const CAMERA_STATUS = { insecure: "Needs HTTPS", denied: "Camera blocked", missing: "No camera" };
const RETRYABLE = new Set(["denied", "missing", "busy", "failed"]); // a tap may fix these
const FACE_STALE_MS = 600; // a face not answered for this long is no longer boxed

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

function connectionLabel({ state, retryInMs }) {
  if (state === "open") return "online";
  if (state === "connecting") return "connecting…";
  if (state === "reconnecting") {
    return retryInMs ? `retry in ${(retryInMs / 1000).toFixed(1)} s` : "reconnecting…";
  }
  return state;
}

function main() {
  const params = new URLSearchParams(location.search);
  const view = new View();
  const smoothBox = document.getElementById("smooth");
  const retry = document.getElementById("retry");
  const timeline = new Timeline(); // the live recording: in this page's memory only
  smoothBox.checked = params.has("smooth") ? params.get("smooth") !== "0" : remembered() !== "0";

  // While several faces are read, each face's latest box and expression, by its id.
  const faces = new Map();
  const client = new Streamfer({
    server: new URL(".", location.href).href, // the folder this page is in: works behind a prefix
    fps: Number(params.get("fps")) || undefined,
    detector: params.get("detector") || undefined,
    maxFaces: Number(params.get("faces")) || 1,
    smoothing: smoothBox.checked,
  });

  client.addEventListener("status", (event) => {
    const { state, detail, code, connection } = event.detail;
    view.setConnection(connection.state, connectionLabel(connection));
    view.conn.dataset.attempt = String(connection.attempt);
    if (state === "camera-error") {
      view.setStatus(state, CAMERA_STATUS[code] || "Camera unavailable");
      view.showHelp(detail, code);
      retry.hidden = !RETRYABLE.has(code);
      return;
    }
    view.setStatus(state, detail);
    if (state !== "streaming") {
      view.markStale();
      faces.clear();
      view.drawBox(null);
    }
  });
  client.addEventListener("ready", (event) => {
    const { classes } = event.detail;
    view.buildBars(classes);
    if (timeline.classes.join() !== classes.join()) timeline.reset(classes, client.fps);
    view.setModel(event.detail.hello);
  });
  client.addEventListener("detector", (event) => {
    const { name, faces, note } = event.detail;
    if (note) view.addDetectorNote(note);
    view.setDetector(name, faces, name === "worker" ? client.options.maxFaces : 1);
  });
  client.addEventListener("expression", (event) => {
    const { probs, raw, top, box, frameId, faceId } = event.detail;
    view.showHelp("");
    if (faceId === null || !(client.options.maxFaces > 1)) {
      timeline.add(raw, box, frameId);
      view.showProbs(probs, top);
      view.drawBox(box);
      return;
    }
    const now = performance.now();
    faces.set(faceId, { box, top, at: now });
    for (const [id, face] of faces) if (now - face.at > FACE_STALE_MS) faces.delete(id);
    const largest = [...faces.values()].reduce((a, b) => (b.box.w > a.box.w ? b : a));
    if (largest.box === box) { // the bars and the timeline follow the nearest face
      timeline.add(raw, box, frameId);
      view.showProbs(probs, top);
    }
    view.drawBoxes([...faces.values()].map((f) => ({ box: f.box, label: f.top })));
    document.body.dataset.faces = JSON.stringify(
      [...faces.entries()].map(([id, f]) => ({ id, top: f.top })));
  });
  client.addEventListener("error", (event) => {
    if (event.detail.kind === "server") view.showHelp(`Server: ${event.detail.message}`, "error");
  });

  smoothBox.addEventListener("change", () => {
    remember(smoothBox.checked ? "1" : "0");
    client.smoothing = smoothBox.checked;
  });
  const start = () => {
    retry.hidden = true;
    view.showHelp("");
    client.start(view.video).catch(() => {}); // explained by the status event
  };
  retry.addEventListener("click", start);
  window.addEventListener("resize", () => view.drawBox(null));

  const showStats = () => {
    const { counts, rttMs, detectMs, fps } = client.stats();
    view.showTiming(rttMs, fps);
    view.showCounts(counts);
    // (for benchmarks, bench/page_stream.py, and the curious)
    if (detectMs !== null) document.documentElement.dataset.detectMs = detectMs.toFixed(1);
  };
  showStats(); // the counters exist from the start, not only after the first tick
  setInterval(showStats, 500);
  setInterval(() => {
    drawChart(document.getElementById("timeline-chart"), timeline, colourFor);
    document.getElementById("download-csv").dataset.rows = String(timeline.length);
  }, 1000);
  document.getElementById("download-csv").addEventListener("click", () =>
    download(timeline.toCsv(), `streamfer-${new Date().toISOString().replace(/[:.]/g, "-")}.csv`));
  start();
}

main();
