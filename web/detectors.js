// In-page face detectors behind one small interface, so a stronger one (a WASM or WebGPU
// model, say) can be added here later without touching capture or streaming code.
//
// A detector is an object {name, detect(video)} where `await detect(video)` returns
//   {box: {x, y, w, h}}  one full face, in video pixels: the page sends a small crop of it;
//   null                 the page is sure no usable face is in view: it sends nothing;
//   undefined            the detector cannot tell: the page sends the (downscaled) full
//                        frame and lets the server detect.

// The server frames a face as a square of FRAME_SCALE x the detector's box (streamfer/faces.py
// FRAME_SCALE), which is how the training faces were framed; the page's crops copy that.
export const FRAME_SCALE = 1.03;

// A face this close to the frame's edge is probably cut off: its crop would not look like a
// training face, so it is not sent.
const EDGE_MARGIN = 0.02;

/** The server detects: the page only sends frames. Always available. */
export class ServerSideDetector {
  constructor() {
    this.name = "server";
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

  constructor() {
    this.name = "shape";
    this.impl = new globalThis.FaceDetector({ fastMode: true, maxDetectedFaces: 4 });
  }

  async detect(video) {
    const faces = await this.impl.detect(video);
    return pickFullFace(
      faces.map((f) => f.boundingBox),
      video.videoWidth,
      video.videoHeight,
    );
  }
}

/**
 * The one face to send from a detector's boxes, or null: the largest box, if no other face
 * is nearly as large (the page would not know whose expression to show) and it lies fully
 * inside the frame.
 */
export function pickFullFace(boxes, frameW, frameH) {
  if (!boxes.length || !frameW || !frameH) return null;
  const sorted = [...boxes].sort((a, b) => b.width * b.height - a.width * a.height);
  const [main, second] = sorted;
  if (second && second.width * second.height > 0.5 * main.width * main.height) return null;
  const mx = EDGE_MARGIN * frameW;
  const my = EDGE_MARGIN * frameH;
  const inside =
    main.x >= mx && main.y >= my && main.x + main.width <= frameW - mx &&
    main.y + main.height <= frameH - my;
  if (!inside) return null;
  return { box: { x: main.x, y: main.y, w: main.width, h: main.height } };
}

/**
 * Wraps a detector so that one that throws (FaceDetector exists in some builds but has no
 * backend, and rejects every call) falls back for good to the server's detector.
 */
class Fallback {
  constructor(primary, onFallback) {
    this.primary = primary;
    this.secondary = new ServerSideDetector();
    this.onFallback = onFallback;
    this.failed = false;
  }

  get name() {
    return this.failed ? this.secondary.name : this.primary.name;
  }

  async detect(video) {
    if (this.failed) return this.secondary.detect(video);
    try {
      return await this.primary.detect(video);
    } catch (err) {
      console.warn(`streamfer: ${this.primary.name} face detector failed, server detects`, err);
      this.failed = true;
      if (this.onFallback) this.onFallback(this.secondary.name);
      return this.secondary.detect(video);
    }
  }
}

// Tried in order; the first available wins. Add a stronger detector at the front.
const DETECTORS = [
  { name: "shape", available: () => ShapeFaceDetector.available(), make: () => new ShapeFaceDetector() },
  { name: "server", available: () => true, make: () => new ServerSideDetector() },
];

/**
 * The best available detector, or the one named (`?detector=server` on the page's URL forces
 * server-side detection, e.g. to compare the two paths).
 */
export function pickDetector(wanted, onFallback) {
  const candidates = wanted ? DETECTORS.filter((d) => d.name === wanted) : DETECTORS;
  for (const entry of candidates) {
    if (!entry.available()) continue;
    try {
      const detector = entry.make();
      return detector.name === "server" ? detector : new Fallback(detector, onFallback);
    } catch (err) {
      console.warn(`streamfer: cannot start the ${entry.name} face detector`, err);
    }
  }
  return new ServerSideDetector();
}
