// In-page face detectors behind one small interface, so capture and streaming code never
// change when one is added.
//
// A detector is an object {name, framing, thread, detect(video)} where `thread` says where
// its work runs ("worker", "main", or "none" for the server's) and `await detect(video)` returns
//   {box: {x, y, w, h}, faces, id, crop, all}  the face to read, in video pixels (the largest of
//                               `faces`; `id`, where the detector tracks faces, names it across
//                               frames): the page sends a crop of it, framed with `framing`
//                               (`crop`, where the detector already cut it: its JPEG bytes;
//                               `all`, where it tracks several: each face in view, {box, id,
//                               crop}, largest first);
//   null                        the page is sure no usable face is in view: it sends nothing;
//   undefined                   the detector cannot tell: the page sends the (downscaled) full
//                               frame and the server detects.
// `framing` ({scale, shift_y}) comes from the server's greeting (streamfer/faces.py FRAMING,
// calibrated per detector against the training faces), never from a copy here.

import { createFaceDetector, workerSupported } from "./detection/index.js";

// A face this close to the frame's edge is probably cut off: its crop would not look like a
// training face, so it is not sent.
const EDGE_MARGIN = 0.02;
// A detector that has not loaded by then (a stalled download, say) counts as failed: the
// page falls back rather than wait for ever without sending.
const LOAD_TIMEOUT_MS = 30000;
// The tracking detector reports up to this many faces a frame (the largest is read).
const MAX_FACES = 4;

/** The server detects: the page only sends frames. Always available. */
export class ServerSideDetector {
  constructor() {
    this.name = "server";
    this.framing = null;
    this.thread = "none";
  }

  async detect() {
    return undefined;
  }
}

/** The Shape Detection API's FaceDetector (Chrome on Android and macOS, behind a flag elsewhere). */
export class ShapeFaceDetector {
  static available() {
    return typeof globalThis.FaceDetector === "function";
  }

  constructor(framing) {
    this.name = "shape";
    this.framing = framing;
    this.thread = "main";
    this.impl = new globalThis.FaceDetector({ fastMode: true, maxDetectedFaces: 4 });
  }

  async detect(video) {
    const faces = await this.impl.detect(video);
    const boxes = faces.map(({ boundingBox: b }) => ({ x: b.x, y: b.y, w: b.width, h: b.height }));
    return pickFace(boxes, video.videoWidth, video.videoHeight);
  }
}

const scriptLoads = new Map(); // src -> Promise: a classic script is added to the page once

function loadScript(src) {
  if (!scriptLoads.has(src)) {
    scriptLoads.set(src, new Promise((resolve, reject) => {
      const el = document.createElement("script");
      el.src = src;
      el.async = true;
      el.onload = resolve;
      el.onerror = () => {
        scriptLoads.delete(src);
        reject(new Error(`could not load ${src}`));
      };
      document.head.append(el);
    }));
  }
  return scriptLoads.get(src);
}

/**
 * MediaPipe's BlazeFace (short range), from @mediapipe/face_detection as this server serves it
 * (the greeting's `page_detector`: nothing comes from a CDN). It runs on the main thread: this
 * package's loader cannot start in a Worker (it importScripts() its graph file, which is not a
 * script), so the page calls it only at the send rate, one frame at a time, and the <video>
 * keeps playing on the browser's own threads. The greeting's `inference` says where the
 * network runs: "cpu" (the package's wasm runtime, its `useCpuInference` option) costs a
 * fraction of "webgl"'s draws and readback for so small a network. docs/BENCHMARKS.md has its
 * recall and speed.
 */
export class BlazeFaceDetector {
  static async load(info, framing) {
    await loadScript(info.script);
    if (typeof globalThis.FaceDetection !== "function") {
      throw new Error(`${info.script} did not define FaceDetection`);
    }
    const impl = new globalThis.FaceDetection({ locateFile: (file) => info.base + file });
    // (minDetectionConfidence must stay unset: setting it aborts this build's graph; the
    // default is 0.5.)
    impl.setOptions({ model: info.model || "short", useCpuInference: info.inference === "cpu" });
    const detector = new BlazeFaceDetector(impl, framing);
    const ready = (async () => {
      await impl.initialize();
      await impl.send({ image: warmUpCanvas() }); // compiles its shaders now, not on frame one
    })();
    ready.catch(() => {}); // (a failure after the timeout has nobody left to tell)
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not ready after ${LOAD_TIMEOUT_MS / 1000} s`)),
        LOAD_TIMEOUT_MS);
    });
    try {
      await Promise.race([ready, late]);
    } finally {
      clearTimeout(timer);
    }
    return detector;
  }

  constructor(impl, framing) {
    this.name = "blazeface";
    this.framing = framing;
    this.thread = "main";
    this.impl = impl;
    this.latest = [];
    impl.onResults((results) => {
      this.latest = results.detections || [];
    });
  }

  async detect(video) {
    this.latest = [];
    await this.impl.send({ image: video });
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    const boxes = this.latest.map(({ boundingBox: b }) => ({
      x: (b.xCenter - b.width / 2) * vw,
      y: (b.yCenter - b.height / 2) * vh,
      w: b.width * vw,
      h: b.height * vh,
    }));
    return pickFace(boxes, vw, vh);
  }
}

/**
 * The same BlazeFace networks (short and full range, chosen per frame, faces tracked) on
 * LiteRT.js in a Web Worker (web/detection/), from the files the greeting's
 * `page_detector.runtime` names; on the main thread where Workers cannot take frames. Its
 * boxes are BlazeFace's, so it crops with BlazeFace's framing.
 */
export class WorkerFaceDetector {
  /**
   * In a Worker where the browser allows; where that fails to start (or the browser cannot
   * hand frames to one), on the main thread, with `onNote` told why.
   */
  static async load(info, framing, onNote = () => {}) {
    const settings = { baseUrl: info.runtime.base, inference: info.inference, maxFaces: MAX_FACES };
    if (workerSupported()) {
      try {
        return new WorkerFaceDetector(await createFaceDetector({ ...settings, worker: true }), framing);
      } catch (err) {
        onNote(`Face detector "worker" could not run in a Worker (${err.message || err}): ` +
          "it runs on the page's main thread.");
        console.warn("streamfer: detection Worker failed, trying the main thread", err);
      }
    }
    return new WorkerFaceDetector(await createFaceDetector({ ...settings, worker: false }), framing);
  }

  constructor(impl, framing) {
    this.name = "worker";
    this.framing = framing;
    this.impl = impl;
    this.thread = impl.inWorker ? "worker" : "main";
  }

  /** pickFace's answer, with the face's tracking `id` and, from a Worker, its `crop`. */
  async detect(video) {
    const { faces } = await this.impl.detect(video, this.framing);
    const picked = pickFace(faces.map((f) => f.box), video.videoWidth, video.videoHeight);
    if (!picked) return null;
    const one = (f) => ({ box: f.box, id: f.id ?? null, crop: f.crop ?? null });
    const face = faces.find((f) => f.box === picked.box);
    // `all`: every face fully in view, largest first, for a client that reads several.
    const all = faces.filter((f) => inFrame(f.box, video.videoWidth, video.videoHeight)).map(one);
    return { ...picked, ...one(face), all };
  }
}

function warmUpCanvas() {
  const c = document.createElement("canvas");
  c.width = 64;
  c.height = 48;
  c.getContext("2d").fillRect(0, 0, 64, 48);
  return c;
}

/**
 * The face to read from a detector's boxes (video pixels), or null: the largest one (a phone's
 * user is nearest its camera), if it lies fully inside the frame. `faces` says how many there
 * were, so the page can say which one it reads.
 */
export function pickFace(boxes, frameW, frameH) {
  if (!boxes.length || !frameW || !frameH) return null;
  const main = boxes.reduce((a, b) => (b.w * b.h > a.w * a.h ? b : a));
  if (!inFrame(main, frameW, frameH)) return null;
  return { box: main, faces: boxes.length };
}

/** Does `box` lie fully inside the frame (EDGE_MARGIN in from its edges)? */
function inFrame(box, frameW, frameH) {
  const mx = EDGE_MARGIN * frameW;
  const my = EDGE_MARGIN * frameH;
  return box.x >= mx && box.y >= my && box.x + box.w <= frameW - mx &&
    box.y + box.h <= frameH - my;
}

/**
 * Detector names in the order the page tries them (`?detector=NAME` puts one first): BlazeFace
 * on LiteRT.js (in a Worker, else on the main thread), MediaPipe's BlazeFace package, the
 * browser's FaceDetector, the server's.
 */
export const DETECTOR_NAMES = ["worker", "blazeface", "shape", "server"];

async function make(name, hello, baseUrl, onNote) {
  const framing = (hello.framing || {})[name];
  switch (name) {
    case "worker":
      if (!hello.page_detector || !hello.page_detector.runtime) {
        throw new Unavailable("this server has no detection runtime installed (web/node_modules)");
      }
      if (!hello.framing || !hello.framing.blazeface) {
        throw new Unavailable("the server sent no framing for BlazeFace");
      }
      return WorkerFaceDetector.load(resolved(hello.page_detector, baseUrl), hello.framing.blazeface,
        onNote);
    case "blazeface":
      if (!hello.page_detector) {
        throw new Unavailable("this server has no in-page detector installed (web/node_modules)");
      }
      if (!framing) throw new Unavailable("the server sent no framing for it");
      return BlazeFaceDetector.load(resolved(hello.page_detector, baseUrl), framing);
    case "shape":
      if (!ShapeFaceDetector.available()) throw new Unavailable("this browser has no FaceDetector");
      if (!framing) throw new Unavailable("the server sent no framing for it");
      return new ShapeFaceDetector(framing);
    case "server":
      return new ServerSideDetector();
    default:
      throw new Unavailable(`no detector is called "${name}" (${DETECTOR_NAMES.join(", ")})`);
  }
}

class Unavailable extends Error {}

/** The greeting's `page_detector` with its URLs (relative to the server's root) made absolute. */
function resolved(info, baseUrl) {
  const absolute = (url) => new URL(url, baseUrl).href;
  const out = { ...info, base: absolute(info.base), script: absolute(info.script) };
  if (info.runtime && info.runtime.base) out.runtime = { ...info.runtime, base: absolute(info.runtime.base) };
  return out;
}

/**
 * The detector to use, after the server's greeting: the one named in `wanted` (the page's
 * `?detector=`), else the first of DETECTOR_NAMES that is available and loads; `baseUrl` is
 * the server's root, against which the greeting's file URLs are read. Every one
 * skipped is reported to `onNote(message)`, so a fallback is always visible, never silent.
 */
export async function chooseDetector(hello, wanted, onNote, baseUrl = document.baseURI) {
  const order = wanted ? [wanted, ...DETECTOR_NAMES.filter((n) => n !== wanted)] : DETECTOR_NAMES;
  for (const name of order) {
    try {
      return await make(name, hello, baseUrl, onNote);
    } catch (err) {
      const why = err instanceof Unavailable ? "unavailable" : "failed to load";
      // Only what the person asked for, or a real failure, is worth a note: a browser
      // without FaceDetector is the normal case.
      if (name === wanted || !(err instanceof Unavailable)) {
        onNote(`Face detector "${name}" ${why}: ${err.message || err}.`);
      }
      console.warn(`streamfer: face detector ${name} ${why}`, err);
    }
  }
  return new ServerSideDetector();
}

/**
 * Wraps a detector so that one that throws mid-stream (FaceDetector exists in some builds but
 * rejects every call; a lost WebGL context) falls back for good to the server's detector, and
 * says so through `onFallback(message)`.
 */
export class Fallback {
  constructor(primary, onFallback) {
    this.primary = primary;
    this.secondary = new ServerSideDetector();
    this.onFallback = onFallback;
    this.failed = false;
  }

  get name() {
    return this.failed ? this.secondary.name : this.primary.name;
  }

  get framing() {
    return this.failed ? this.secondary.framing : this.primary.framing;
  }

  get thread() {
    return this.failed ? this.secondary.thread : this.primary.thread;
  }

  async detect(video) {
    if (this.failed) return this.secondary.detect(video);
    try {
      return await this.primary.detect(video);
    } catch (err) {
      console.warn(`streamfer: ${this.primary.name} face detector failed, server detects`, err);
      this.failed = true;
      const why = err.message || err;
      this.onFallback(
        `Face detector "${this.primary.name}" failed (${why}): the server detects faces.`,
      );
      return this.secondary.detect(video);
    }
  }
}
