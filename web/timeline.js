// The live timeline the page keeps in memory: one row per answered frame, in a ring buffer
// of about ten minutes at the send rate (the oldest rows give way), downloadable as CSV in
// the same columns as the video tool (streamfer/video/timeline.py `columns`), and a small
// chart of the last minute per class. Nothing here is sent anywhere.

export const FIXED_COLUMNS = Object.freeze(["time_s", "frame", "face_id", "x", "y", "w", "h"]);
export const KEEP_S = 600;
export const CHART_S = 60;

/** The CSV header: time_s, frame, face_id, x, y, w, h, one column per class, top. */
export function columns(classes) {
  return [...FIXED_COLUMNS, ...classes, "top"];
}

export class Timeline {
  constructor(classes = [], fps = 15, keepS = KEEP_S) {
    this.reset(classes, fps, keepS);
  }

  /** Start again (a new greeting: its classes, the send rate that sizes the buffer). */
  reset(classes, fps = 15, keepS = KEEP_S) {
    this.classes = [...classes];
    this.capacity = Math.max(1, Math.ceil(fps * keepS));
    this.rows = new Array(this.capacity);
    this.start = 0; // index of the oldest row
    this.length = 0;
    this.t0 = null;
  }

  /** One answered frame: probabilities {class: p}, the face box {x, y, w, h}, when (ms). */
  add(probs, box, frame, nowMs = performance.now()) {
    if (this.t0 === null) this.t0 = nowMs;
    const p = Float32Array.from(this.classes, (c) => probs[c] ?? 0);
    const row = {
      t: (nowMs - this.t0) / 1000,
      frame,
      box: box ? [box.x, box.y, box.w, box.h].map(Math.round) : [0, 0, 0, 0],
      p,
    };
    const end = (this.start + this.length) % this.capacity;
    this.rows[end] = row;
    if (this.length < this.capacity) this.length += 1;
    else this.start = (this.start + 1) % this.capacity;
  }

  /** The rows, oldest first. */
  *[Symbol.iterator]() {
    for (let i = 0; i < this.length; i += 1) yield this.rows[(this.start + i) % this.capacity];
  }

  /** The rows of the last `seconds` (for the chart). */
  recent(seconds = CHART_S) {
    const out = [];
    if (!this.length) return out;
    const last = this.rows[(this.start + this.length - 1) % this.capacity].t;
    for (const row of this) if (row.t >= last - seconds) out.push(row);
    return out;
  }

  /** The whole timeline as CSV text. */
  toCsv() {
    const lines = [columns(this.classes).join(",")];
    for (const row of this) {
      let best = 0;
      for (let k = 1; k < row.p.length; k += 1) if (row.p[k] > row.p[best]) best = k;
      const probs = Array.from(row.p, (v) => Number(v.toFixed(5)));
      lines.push([row.t.toFixed(3), row.frame, 1, ...row.box, ...probs, this.classes[best]]
        .join(","));
    }
    return `${lines.join("\n")}\n`;
  }
}

/** Each class's probability over the last `seconds`, one line per class. */
export function drawChart(canvas, timeline, colourFor, seconds = CHART_S) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const rows = timeline.recent(seconds);
  if (rows.length < 2) return;
  const end = rows[rows.length - 1].t;
  const x = (t) => width - ((end - t) / seconds) * width;
  timeline.classes.forEach((name, k) => {
    ctx.strokeStyle = colourFor(name);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    rows.forEach((row, i) => {
      const y = height - row.p[k] * (height - 2) - 1;
      if (i === 0) ctx.moveTo(x(row.t), y);
      else ctx.lineTo(x(row.t), y);
    });
    ctx.stroke();
  });
}

/** Save text as a file through the browser's download (no server involved). */
export function download(text, filename, doc = document) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const a = doc.createElement("a");
  a.href = url;
  a.download = filename;
  doc.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
