// The detection Worker. A classic (not module) Worker: LiteRT.js loads its wasm glue with
// importScripts(), which module Workers lack; the engine itself comes in by dynamic import().
//
// Messages in:  {type: "load", options}            -> {type: "loaded", runtime} | {type: "error"}
//               {type: "detect", seq, frame, framing}
//                                                   -> {type: "faces", seq, faces, ms, range}
//                                                      | {type: "error", seq, message}
//               {type: "close"}
// `frame` is an ImageBitmap transferred by the page: the Worker closes it after use. With
// `framing` (the greeting's {scale, shift_y}) each face also comes with `crop`, its gray JPEG
// (web/crop.js, transferred) and `cropBox`, cut from this very frame: the page then only
// sends it, and the frame is never drawn on the main thread.

let engine = null;
let crop = null; // web/crop.js and its canvas, loaded with the engine
let queue = Promise.resolve(); // one message at a time: the engine's canvases are shared

self.onmessage = (event) => {
  queue = queue.then(() => handle(event.data));
};

async function handle(msg) {
  try {
    if (msg.type === "load") {
      const { FaceEngine } = await import("./engine.js");
      engine = await FaceEngine.load(msg.options);
      const module = await import("../crop.js");
      const canvas = new OffscreenCanvas(module.CROP_SIZE, module.CROP_SIZE);
      crop = { module, canvas, ctx: canvas.getContext("2d", { willReadFrequently: true }) };
      self.postMessage({ type: "loaded", runtime: engine.runtime });
    } else if (msg.type === "detect") {
      try {
        const result = await engine.detect(msg.frame);
        const transfer = [];
        if (msg.framing) {
          for (const face of result.faces) {
            face.cropBox = crop.module.cropSquare(face.box, msg.framing);
            crop.module.drawCrop(crop.ctx, msg.frame, face.cropBox);
            face.crop = await crop.module.encodeOffscreen(crop.canvas);
            transfer.push(face.crop);
          }
        }
        self.postMessage({ type: "faces", seq: msg.seq, ...result }, transfer);
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
