// createFaceDetector: BlazeFace (short + full range, tracked) on LiteRT.js, in a Web Worker
// where the browser can hand it frames (Worker + createImageBitmap + OffscreenCanvas), else
// on the main thread. In a Worker the page only grabs a frame (an ImageBitmap, transferred,
// not copied) and draws; decoding, inference and suppression all happen off the main thread.
//
//   const det = await createFaceDetector({ baseUrl, range, maxFaces, worker, inference });
//   const { faces, ms, range } = await det.detect(videoOrBitmapOrCanvas, framing);
//   // faces: [{ box: {x, y, w, h} in source pixels, score, id }], largest first; with
//   // `framing` ({scale, shift_y}) and in a Worker also {crop: gray JPEG bytes, cropBox}
//   det.close();
//
// `baseUrl` is the folder the server serves the runtime and both networks from (the
// greeting's page_detector.runtime.base, relative to the page); see engine.js for `range`
// and for `track` (default true: a face is looked for where it was; false for unrelated
// stills).

import { FaceEngine, INFERENCES, RANGES, sourceSize } from "./engine.js";

const LOAD_TIMEOUT_MS = 30000; // a stalled download counts as a failure, not a wait for ever
// A Worker that has not answered a frame by then (killed for memory, say) counts as failed:
// the caller falls back instead of waiting for ever.
const FRAME_TIMEOUT_MS = 10000;

/** Can this browser run the detector in a Worker? */
export function workerSupported() {
  return typeof Worker === "function" && typeof OffscreenCanvas === "function" &&
    typeof createImageBitmap === "function";
}

function withTimeout(promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} not ready after ${LOAD_TIMEOUT_MS / 1000} s`)),
      LOAD_TIMEOUT_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** The engine in a Worker, behind the same detect()/close() as the engine itself. */
class WorkerDetector {
  constructor(worker, runtime) {
    this.worker = worker;
    this.runtime = runtime;
    this.seq = 0;
    this.waiting = new Map(); // seq -> {resolve, reject}
    worker.onmessage = ({ data }) => {
      const pending = this.waiting.get(data.seq);
      if (!pending) return;
      this.waiting.delete(data.seq);
      if (data.type === "faces") pending.resolve({ faces: data.faces, ms: data.ms, range: data.range });
      else pending.reject(new Error(data.message));
    };
    worker.onerror = (event) => this.failAll(new Error(event.message || "detection Worker failed"));
  }

  static async start(options) {
    const worker = new Worker(new URL("./worker.js", import.meta.url));
    const loaded = new Promise((resolve, reject) => {
      worker.onmessage = ({ data }) => (data.type === "loaded" ? resolve(data.runtime)
        : reject(new Error(data.message)));
      worker.onerror = (event) => {
        event.preventDefault();
        reject(new Error(event.message || "the detection Worker did not start"));
      };
    });
    worker.postMessage({ type: "load", options });
    try {
      return new WorkerDetector(worker, await withTimeout(loaded, "the detection Worker"));
    } catch (err) {
      worker.terminate();
      throw err;
    }
  }

  async detect(source, framing = null) {
    const [w, h] = sourceSize(source);
    if (!w || !h) return { faces: [], ms: 0, range: "none" };
    const frame = source instanceof ImageBitmap ? source : await createImageBitmap(source);
    const seq = ++this.seq;
    let timer;
    const result = new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      timer = setTimeout(() => {
        this.waiting.delete(seq);
        reject(new Error(`the detection Worker did not answer within ${FRAME_TIMEOUT_MS / 1000} s`));
      }, FRAME_TIMEOUT_MS);
    });
    this.worker.postMessage({ type: "detect", seq, frame, framing }, [frame]);
    return result.finally(() => clearTimeout(timer));
  }

  failAll(err) {
    for (const { reject } of this.waiting.values()) reject(err);
    this.waiting.clear();
  }

  close() {
    this.worker.postMessage({ type: "close" });
    this.failAll(new Error("detector closed"));
  }
}

/** See the file's header. Rejects when the runtime or a network fails to load. */
export async function createFaceDetector(options = {}) {
  const {
    baseUrl, range = "auto", maxFaces = 1, inference = "cpu", worker = workerSupported(),
    track = true,
  } = options;
  if (!baseUrl) throw new Error("createFaceDetector needs baseUrl (the greeting's runtime base)");
  if (!RANGES.includes(range)) throw new Error(`range must be one of ${RANGES.join(", ")}`);
  if (!INFERENCES.includes(inference)) throw new Error(`inference must be one of ${INFERENCES.join(", ")}`);
  const settings = {
    baseUrl: new URL(baseUrl, location.href).href, range, maxFaces, inference, track,
  };
  const name = `blazeface-${range}`;
  if (worker) {
    const impl = await WorkerDetector.start(settings);
    return {
      name, runtime: impl.runtime, inWorker: true,
      detect: (source, framing) => impl.detect(source, framing),
      close: () => impl.close(),
    };
  }
  const engine = await withTimeout(FaceEngine.load(settings), "the face detector");
  return {
    name, runtime: engine.runtime, inWorker: false,
    detect: (source) => engine.detect(source),
    close: () => engine.close(),
  };
}
