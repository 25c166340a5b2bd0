// The face crop the page sends: its geometry, gray conversion and encoding, defined once for
// the main thread (capture.js, from the <video>) and the detection Worker (from the frame it
// already holds, on an OffscreenCanvas), so both send the same image.

export const CROP_SIZE = 96; // 2x the model's 48 px input: room for the server's resize
export const JPEG_QUALITY = 0.8;
const FILL = "#808080"; // parts of the square outside the frame

/**
 * The square (source pixels) around a face box, framed like the training faces: `framing` is
 * the detector's {scale, shift_y} from the greeting (streamfer/faces.py crop_face's geometry).
 */
export function cropSquare(box, framing) {
  const side = Math.max(box.w, box.h) * framing.scale;
  const x = box.x + box.w / 2 - side / 2;
  const y = box.y + box.h / 2 + framing.shift_y * side - side / 2;
  return { x, y, w: side, h: side };
}

/** Gray (BT.601 luma) in place, as the server reads faces. */
export function toGray(ctx, w, h) {
  const img = ctx.getImageData(0, 0, w, h);
  const px = img.data;
  for (let i = 0; i < px.length; i += 4) {
    const y = (px[i] * 77 + px[i + 1] * 150 + px[i + 2] * 29) >> 8;
    px[i] = y;
    px[i + 1] = y;
    px[i + 2] = y;
  }
  ctx.putImageData(img, 0, 0);
}

/** Draw the crop of `square` from `source` onto a CROP_SIZE canvas context, gray. */
export function drawCrop(ctx, source, square) {
  ctx.fillStyle = FILL;
  ctx.fillRect(0, 0, CROP_SIZE, CROP_SIZE);
  ctx.drawImage(source, square.x, square.y, square.w, square.h, 0, 0, CROP_SIZE, CROP_SIZE);
  toGray(ctx, CROP_SIZE, CROP_SIZE);
}

/** An OffscreenCanvas's JPEG bytes (Workers have no toBlob). */
export async function encodeOffscreen(canvas) {
  const blob = await canvas.convertToBlob({ type: "image/jpeg", quality: JPEG_QUALITY });
  return blob.arrayBuffer();
}
