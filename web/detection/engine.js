// The face detection engine: BlazeFace's two .tflite networks (short and full range, from
// @mediapipe/face_detection) run by LiteRT.js (@litertjs/core: XNNPACK in wasm, or WebGPU),
// both loaded from one folder this server serves (streamfer/server/vendor.py). It runs in
// the Worker (worker.js) or, where Workers cannot draw images, on the main thread; it needs
// no DOM beyond a canvas.
//
// Ranges ("auto"): a face is searched first in a square around where it was in the last
// frame (TRACK_SCALE x its box): it then fills about half the short-range network's input,
// however far it is from the camera, so one short-range run per face suffices. Without a
// tracked face the whole frame is searched with the full-range network (small, far faces as
// well as near ones; the short-range one, shown a small face, tends to answer with a box
// far too large around it), then, if it finds none, with the short-range one (a face so
// close that it fills the frame), then, if neither finds one, one tile of the frame (half
// its longer side) with the full-range network, the next tile on the next such frame: a
// face too far for either whole-frame search (~60 px in 640x480) is found within a few
// frames and then tracked. "short" searches whole frames with that network only, "full"
// whole frames and tiles with the full-range one, besides tracking.

import { decode, iou, NMS_IOU, SPECS, ssdAnchors } from "./blazeface.js";
import { IouTracker } from "./tracker.js";

export const RANGES = ["auto", "short", "full"];
export const INFERENCES = ["cpu", "webgl", "webgpu"];
const TRACK_SCALE = 2.2; // streamfer/detect.py TRACK_SCALE: the tracking square, in box sides
const RESCAN_MS = 500; // fewer faces tracked than maxFaces: the whole frame is searched this often
const GRAY = "rgb(128, 128, 128)"; // letterbox margins, as the server's BlazeFace fills them

const runtimes = new Map(); // base URL -> Promise of the LiteRT.js module, loaded once

function loadRuntime(baseUrl) {
  if (!runtimes.has(baseUrl)) {
    runtimes.set(baseUrl, (async () => {
      const litert = await import(new URL("litert.js", baseUrl).href);
      // The wasm glue finds its .wasm beside the script that loaded it, which in a Worker is
      // the Worker's own script: LiteRT.js's loader hands `self.Module` to the glue, so a
      // locateFile there points it at the served folder.
      self.Module = { locateFile: (file) => new URL(file, baseUrl).href };
      await litert.loadLiteRt(baseUrl);
      return litert;
    })());
    runtimes.get(baseUrl).catch(() => runtimes.delete(baseUrl));
  }
  return runtimes.get(baseUrl);
}

function makeCanvas(size) {
  if (typeof OffscreenCanvas === "function") return new OffscreenCanvas(size, size);
  const c = document.createElement("canvas");
  c.width = size;
  c.height = size;
  return c;
}

/** The pixel size of anything drawImage takes. */
export function sourceSize(source) {
  if (source.videoWidth !== undefined) return [source.videoWidth, source.videoHeight];
  return [source.width, source.height];
}

/** One network: its LiteRT model, its anchors and the canvas its input is drawn on. */
class Network {
  constructor(litert, spec, model) {
    this.litert = litert;
    this.spec = spec;
    this.model = model;
    this.anchors = ssdAnchors(spec);
    this.canvas = makeCanvas(spec.size);
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.input = new Float32Array(spec.size * spec.size * 3);
    const outputs = model.getOutputDetails();
    // Two outputs, told apart by shape: regressors (1 x A x 16) and scores (1 x A x 1).
    this.regressIndex = outputs.findIndex((o) => o.shape[o.shape.length - 1] === 16);
    if (this.regressIndex < 0 || outputs.length !== 2) {
      throw new Error(`${spec.file}: unexpected outputs ${outputs.map((o) => o.shape).join(" ")}`);
    }
  }

  /**
   * Faces in the square (x0, y0, side) of `source` (or the whole source, letterboxed, when
   * `region` is null), best first, as {box: {x, y, w, h} in source pixels, score}.
   */
  async search(source, width, height, region) {
    const s = this.spec.size;
    const [x0, y0, side] = region || [0, 0, Math.max(width, height)];
    const scale = s / side;
    // Letterboxed whole frames are centred, as the server's prepare() does.
    const ox = region ? -x0 * scale : Math.floor((s - Math.round(width * scale)) / 2);
    const oy = region ? -y0 * scale : Math.floor((s - Math.round(height * scale)) / 2);
    const ctx = this.ctx;
    ctx.fillStyle = GRAY;
    ctx.fillRect(0, 0, s, s);
    ctx.drawImage(source, 0, 0, width, height, ox, oy, width * scale, height * scale);
    const px = ctx.getImageData(0, 0, s, s).data;
    const input = this.input;
    for (let i = 0, j = 0; i < px.length; i += 4, j += 3) {
      input[j] = px[i] / 127.5 - 1;
      input[j + 1] = px[i + 1] / 127.5 - 1;
      input[j + 2] = px[i + 2] / 127.5 - 1;
    }
    const tensor = new this.litert.Tensor(input, [1, s, s, 3]);
    let outputs;
    try {
      outputs = await this.model.run(tensor);
    } finally {
      tensor.delete();
    }
    const arrays = [];
    for (const out of outputs) {
      const here = out.accelerator === "wasm" ? out : await out.moveTo("wasm");
      arrays.push(here.toTypedArray().slice());
      here.delete();
      if (here !== out) out.delete();
    }
    const regress = arrays[this.regressIndex];
    const logits = arrays[1 - this.regressIndex];
    const faces = [];
    for (const { box, score } of decode(this.spec, this.anchors, regress, logits)) {
      const xa = Math.max(0, (box[0] - ox) / scale);
      const ya = Math.max(0, (box[1] - oy) / scale);
      const xb = Math.min(width, (box[2] - ox) / scale);
      const yb = Math.min(height, (box[3] - oy) / scale);
      if (xb - xa >= 2 && yb - ya >= 2) faces.push({ box: { x: xa, y: ya, w: xb - xa, h: yb - ya }, score });
    }
    return faces;
  }

  close() {
    this.model.delete();
  }
}

function trackRegion(box) {
  const side = Math.max(8, Math.round(Math.max(box.w, box.h) * TRACK_SCALE));
  return [Math.round(box.x + box.w / 2 - side / 2), Math.round(box.y + box.h / 2 - side / 2), side];
}

/**
 * Squares of half the frame's longer side, overlapping by half, covering the frame
 * (streamfer/detect.py BlazeFace.detect_photo's tiles): a face too small for a whole-frame
 * search is twice as large in its tile.
 */
function tileRegions(width, height) {
  const side = Math.round(Math.max(width, height) / 2);
  const step = Math.round(side / 2);
  const starts = (extent) => {
    const out = [];
    for (let v = 0; v < extent - side; v += step) out.push(v);
    out.push(Math.max(0, extent - side));
    return [...new Set(out)];
  };
  return starts(height).flatMap((y) => starts(width).map((x) => [x, y, side]));
}

/** Overlapping faces from different searches: the most confident one stays. */
function merge(faces) {
  const kept = [];
  for (const f of [...faces].sort((a, b) => b.score - a.score)) {
    const c = [f.box.x, f.box.y, f.box.x + f.box.w, f.box.y + f.box.h];
    if (kept.every((k) => iou(c, [k.box.x, k.box.y, k.box.x + k.box.w, k.box.y + k.box.h]) <= NMS_IOU)) {
      kept.push(f);
    }
  }
  return kept;
}

/** The engine behind createFaceDetector: see the file's header. */
export class FaceEngine {
  /**
   * options: {baseUrl (absolute URL of the served folder), range, maxFaces, inference,
   * track (default true; false searches every frame whole: for unrelated stills)}.
   * Resolves once both networks are compiled and have run once.
   */
  static async load({ baseUrl, range = "auto", maxFaces = 1, inference = "cpu", track = true }) {
    if (!RANGES.includes(range)) throw new Error(`range must be one of ${RANGES.join(", ")}`);
    if (!INFERENCES.includes(inference)) {
      throw new Error(`inference must be one of ${INFERENCES.join(", ")}`);
    }
    const litert = await loadRuntime(baseUrl);
    // LiteRT.js runs on XNNPACK (wasm) or WebGPU; it has no WebGL path, so "webgl" (the
    // server's --page-inference for the legacy detector) runs on the CPU here.
    const accelerator = inference === "webgpu" && litert.isWebGPUSupported() ? "webgpu" : "wasm";
    const nets = {};
    for (const name of range === "auto" ? ["short", "full"] : [range, "short"]) {
      if (nets[name]) continue;
      const spec = SPECS[name];
      const model = await litert.loadAndCompile(new URL(spec.file, baseUrl).href, { accelerator });
      nets[name] = new Network(litert, spec, model);
      await nets[name].search(makeCanvas(64), 64, 64, null); // first run allocates: not on frame one
    }
    return new FaceEngine(nets, range, maxFaces, `litert-${accelerator}`, track);
  }

  constructor(nets, range, maxFaces, runtime, track) {
    this.nets = nets;
    this.range = range;
    this.runtime = runtime;
    this.track = track; // false: every frame is searched whole (unrelated stills, benchmarks)
    this.tracker = new IouTracker(Math.max(1, Math.floor(maxFaces)));
    this.lastFullSearch = -Infinity;
    this.nextTile = 0;
  }

  /** {faces: [{box, score, id}], ms, range}: `range` names the searches this frame took. */
  async detect(source) {
    const t0 = performance.now();
    const [width, height] = sourceSize(source);
    if (!width || !height) return { faces: [], ms: 0, range: "none" };
    const used = [];
    let found = [];
    let lost = false;
    for (const track of this.tracker.tracks) {
      const faces = await this.nets.short.search(source, width, height, trackRegion(track.box));
      if (faces.length) found.push(faces[0]);
      else lost = true;
      if (!used.includes("track")) used.push("track");
    }
    const tracked = this.tracker.tracks.length;
    const due = tracked < this.tracker.maxFaces && t0 - this.lastFullSearch >= RESCAN_MS;
    if (!tracked || lost || due) {
      this.lastFullSearch = t0;
      const first = this.range === "short" ? "short" : "full";
      let whole = await this.nets[first].search(source, width, height, null);
      used.push(first);
      if (!whole.length && this.range === "auto" && !found.length) {
        whole = await this.nets.short.search(source, width, height, null);
        used.push("short");
      }
      if (!whole.length && this.range !== "short" && !found.length) {
        const tiles = tileRegions(width, height);
        const tile = tiles[this.nextTile++ % tiles.length];
        whole = await this.nets.full.search(source, width, height, tile);
        used.push("tile");
      }
      found = [...found, ...whole];
    }
    const faces = this.tracker.update(merge(found));
    if (!this.track) this.tracker.reset();
    return { faces, ms: performance.now() - t0, range: used.join("+") };
  }

  close() {
    for (const net of Object.values(this.nets)) net.close();
    this.tracker.reset();
  }
}
