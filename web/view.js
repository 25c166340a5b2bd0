// Everything the page shows, and the data-* attributes tests read. No logic about frames or
// sockets lives here: app.js decides, this draws.

// How each class the models know looks: its emoji and its bar colour.
const LOOK = {
  anger: ["😠", "#f05252"],
  disgust: ["🤢", "#5bc878"],
  fear: ["😨", "#a78bfa"],
  happiness: ["😄", "#fbbf24"],
  sadness: ["😢", "#60a5fa"],
  surprise: ["😮", "#fb923c"],
  neutral: ["😐", "#9ca3af"],
  contempt: ["😒", "#f472b6"],
};
// A class without a look of its own, and the card before any prediction: U+1F636 (no mouth,
// no expression read yet) is in every phone's emoji font and in DejaVu Sans, unlike U+1F642.
export const NO_EXPRESSION = "😶";
const UNKNOWN = [NO_EXPRESSION, "#9ca3af"];

export function colourFor(name) {
  return (LOOK[name] ?? UNKNOWN)[1];
}

export function emojiFor(name) {
  return (LOOK[name] ?? UNKNOWN)[0];
}

// What #status says for each state; app.js may add detail.
const STATUS_TEXT = {
  starting: "Starting camera…",
  connecting: "Connecting to the server…",
  reconnecting: "Connection lost — reconnecting…",
  waiting: "Looking for a face…",
  streaming: "Live",
  "no-face": "No face — look at the camera",
  "too-dark": "Too dark — find more light",
  paused: "Paused",
  "camera-error": "Camera unavailable",
};

const DETECTOR_LABEL = {
  loading: "Face: loading the detector…",
  blazeface: "Face: BlazeFace (in page)",
  worker: "Face: BlazeFace (in page, LiteRT.js)",
  shape: "Face: FaceDetector (in page)",
  server: "Face: server detects",
};

export class View {
  constructor(doc = document) {
    this.doc = doc;
    this.status = doc.getElementById("status");
    this.statusText = doc.getElementById("status-text");
    this.conn = doc.getElementById("conn");
    this.top = doc.getElementById("top");
    this.topEmoji = doc.getElementById("top-emoji");
    this.topWord = doc.getElementById("top-word");
    this.bars = doc.getElementById("bars");
    this.rtt = doc.getElementById("rtt");
    this.fps = doc.getElementById("fps");
    this.stats = doc.getElementById("stats");
    this.help = doc.getElementById("help");
    this.model = doc.getElementById("model");
    this.detector = doc.getElementById("detector");
    this.detectorNote = doc.getElementById("detector-note");
    this.video = doc.getElementById("camera");
    this.overlay = doc.getElementById("overlay");
    this.rows = new Map(); // class -> {li, fill, pct}
  }

  setStatus(state, detail = "") {
    this.status.dataset.state = state;
    this.statusText.textContent = detail || STATUS_TEXT[state] || state;
    this.doc.body.dataset.state = state;
  }

  setConnection(state, text) {
    this.conn.dataset.state = state;
    this.conn.textContent = text;
  }

  showHelp(message, kind = "") {
    this.help.hidden = !message;
    this.help.dataset.kind = kind;
    this.help.textContent = message;
  }

  /** Which detector finds faces, and (`faces` > 1) that the boxed, largest face is read. */
  /** `read`: how many faces the page reads at once (each boxed); 1 reads the largest. */
  setDetector(name, faces = 0, read = 1) {
    const label = DETECTOR_LABEL[name] ?? name;
    this.detector.dataset.name = name;
    this.detector.dataset.faces = String(faces);
    const which = read > 1 ? `reading ${Math.min(faces, read)}, each boxed` : "reading the boxed one";
    this.detector.textContent = faces > 1 ? `${label} · ${faces} faces: ${which}` : label;
    this.doc.body.dataset.detector = name;
  }

  /** A detector that was asked for or failed, and what is used instead (stays visible). */
  addDetectorNote(message) {
    const line = this.doc.createElement("p");
    line.textContent = message;
    this.detectorNote.append(line);
    this.detectorNote.hidden = false;
  }

  setModel(hello) {
    this.model.textContent = hello ? `${hello.model} · ${hello.classes.length} classes` : "";
  }

  /** One bar per class, in the greeting's order. */
  buildBars(classes) {
    this.bars.replaceChildren();
    this.rows.clear();
    for (const name of classes) {
      const li = this.doc.createElement("li");
      li.dataset.class = name;
      li.dataset.prob = "0";
      li.style.setProperty("--colour", colourFor(name));
      li.innerHTML =
        '<span class="label"><span class="e" aria-hidden="true"></span><span class="n"></span></span>' +
        '<span class="track"><span class="fill"></span></span><span class="pct">–</span>';
      li.querySelector(".e").textContent = emojiFor(name);
      li.querySelector(".n").textContent = name;
      this.bars.append(li);
      this.rows.set(name, { li, fill: li.querySelector(".fill"), pct: li.querySelector(".pct") });
    }
  }

  /** Probabilities {class: p} as bars, and the top class as a word and an emoji. */
  showProbs(probs, top) {
    for (const [name, row] of this.rows) {
      const p = probs[name] ?? 0;
      row.li.dataset.prob = String(p);
      row.li.classList.toggle("is-top", name === top);
      row.fill.style.transform = `scaleX(${Math.max(0, Math.min(1, p))})`;
      row.pct.textContent = `${Math.round(p * 100)}%`;
    }
    this.bars.classList.remove("stale");
    this.top.dataset.class = top;
    this.top.classList.remove("stale");
    this.top.style.setProperty("--colour", colourFor(top));
    this.topEmoji.textContent = emojiFor(top);
    this.topWord.textContent = top;
  }

  /** Keep the last prediction visible but dimmed: it no longer describes the camera. */
  markStale() {
    this.bars.classList.add("stale");
    this.top.classList.add("stale");
  }

  showTiming(rttMs, fps) {
    if (rttMs !== null) {
      this.rtt.dataset.ms = rttMs.toFixed(1);
      this.rtt.textContent = `${Math.round(rttMs)} ms`;
    }
    this.fps.dataset.fps = fps.toFixed(1);
    this.fps.textContent = fps.toFixed(fps < 10 ? 1 : 0);
  }

  showCounts(counts) {
    for (const [key, value] of Object.entries(counts)) this.stats.dataset[key] = String(value);
  }

  /** Outline the face (box in video pixels) on the preview, or clear it. */
  drawBox(box) {
    this.drawBoxes(box ? [{ box }] : []);
  }

  /**
   * Boxes over the preview, each `{box, label}` (video pixels; `label`, where given, is
   * written by its box: a face's expression while several are read).
   */
  drawBoxes(items) {
    const c = this.overlay;
    const dpr = window.devicePixelRatio || 1;
    const cw = c.clientWidth;
    const ch = c.clientHeight;
    if (c.width !== Math.round(cw * dpr) || c.height !== Math.round(ch * dpr)) {
      c.width = Math.round(cw * dpr);
      c.height = Math.round(ch * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    const vw = this.video.videoWidth;
    const vh = this.video.videoHeight;
    if (!vw || !vh) return;
    // The preview is object-fit: cover, so map video pixels the same way.
    const scale = Math.max(cw / vw, ch / vh);
    const ox = (cw - vw * scale) / 2;
    const oy = (ch - vh * scale) / 2;
    const colour = getComputedStyle(this.top).getPropertyValue("--colour").trim() || "#fbbf24";
    for (const { box, label } of items) {
      const x = (ox + box.x * scale) * dpr;
      const y = (oy + box.y * scale) * dpr;
      const w = box.w * scale * dpr;
      const h = box.h * scale * dpr;
      const r = Math.min(w, h) * 0.12;
      ctx.lineWidth = 3 * dpr;
      ctx.strokeStyle = colour;
      ctx.beginPath();
      ctx.roundRect ? ctx.roundRect(x, y, w, h, r) : ctx.rect(x, y, w, h);
      ctx.stroke();
      if (label) {
        // The preview is mirrored by CSS: the text is mirrored back so it reads right.
        ctx.save();
        ctx.font = `${Math.round(14 * dpr)}px system-ui, sans-serif`;
        ctx.fillStyle = colour;
        ctx.translate(x + w / 2, Math.max(14 * dpr, y - 6 * dpr));
        if (c.closest(".mirror")) ctx.scale(-1, 1);
        ctx.textAlign = "center";
        ctx.fillText(label, 0, 0);
        ctx.restore();
      }
    }
  }
}
