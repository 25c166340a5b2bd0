// The detection Worker. A classic (not module) Worker: LiteRT.js loads its wasm glue with
// importScripts(), which module Workers lack; the engine itself comes in by dynamic import().
//
// Messages in:  {type: "load", options}            -> {type: "loaded", runtime} | {type: "error"}
//               {type: "detect", seq, frame}        -> {type: "faces", seq, faces, ms, range}
//                                                      | {type: "error", seq, message}
//               {type: "close"}
// `frame` is an ImageBitmap transferred by the page: the Worker closes it after use.

let engine = null;
let queue = Promise.resolve(); // one message at a time: the engine's canvases are shared

self.onmessage = (event) => {
  queue = queue.then(() => handle(event.data));
};

async function handle(msg) {
  try {
    if (msg.type === "load") {
      const { FaceEngine } = await import("./engine.js");
      engine = await FaceEngine.load(msg.options);
      self.postMessage({ type: "loaded", runtime: engine.runtime });
    } else if (msg.type === "detect") {
      try {
        const result = await engine.detect(msg.frame);
        self.postMessage({ type: "faces", seq: msg.seq, ...result });
      } finally {
        msg.frame.close();
      }
    } else if (msg.type === "close") {
      if (engine) engine.close();
      engine = null;
      self.close();
    }
  } catch (err) {
    self.postMessage({ type: "error", seq: msg.seq, message: String((err && err.message) || err) });
  }
}
