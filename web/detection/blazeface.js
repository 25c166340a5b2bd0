// BlazeFace's geometry, as MediaPipe's face detection graph configures it and as the server's
// PyTorch port (streamfer/detect.py) reproduces it: SSD anchors, box offsets scaled by the
// input side, sigmoid scores clipped at +-100, weighted non-maximum suppression at IoU 0.3.
// Pure functions, no DOM: the Worker and the main thread both import it.

export const NMS_IOU = 0.3; // MediaPipe's min_suppression_threshold
const SCORE_CLIP = 100;

/** The two networks of @mediapipe/face_detection (streamfer/detect.py SPECS). */
export const SPECS = {
  short: { name: "short", file: "face_detection_short_range.tflite", size: 128,
    strides: [8, 16, 16, 16], anchorsPerCell: 2, minScore: 0.5 },
  full: { name: "full", file: "face_detection_full_range.tflite", size: 192,
    strides: [4], anchorsPerCell: 1, minScore: 0.6 },
};

/** Anchor centres (x, y interleaved, in [0, 1]); layers of equal stride share one grid. */
export function ssdAnchors(spec) {
  const out = [];
  let i = 0;
  while (i < spec.strides.length) {
    const stride = spec.strides[i];
    let n = 0;
    while (i < spec.strides.length && spec.strides[i] === stride) {
      n += spec.anchorsPerCell;
      i += 1;
    }
    const cells = Math.ceil(spec.size / stride);
    for (let y = 0; y < cells; y++) {
      for (let x = 0; x < cells; x++) {
        for (let k = 0; k < n; k++) out.push((x + 0.5) / cells, (y + 0.5) / cells);
      }
    }
  }
  return Float32Array.from(out);
}

/** IoU of two [x0, y0, x1, y1] boxes. */
export function iou(a, b) {
  const ix = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const iy = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = ix * iy;
  const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  return inter / Math.max(union, 1e-9);
}

/**
 * MediaPipe's WEIGHTED suppression: each cluster of overlapping boxes becomes their
 * score-weighted mean, with the best score of the cluster. Best first.
 */
export function weightedNms(boxes, scores, threshold = NMS_IOU) {
  let order = scores.map((s, i) => i).sort((a, b) => scores[b] - scores[a]);
  const out = [];
  while (order.length) {
    const top = boxes[order[0]];
    const near = [];
    const rest = [];
    for (const i of order) (iou(top, boxes[i]) > threshold ? near : rest).push(i);
    const mean = [0, 0, 0, 0];
    let wsum = 0;
    for (const i of near) {
      for (let k = 0; k < 4; k++) mean[k] += boxes[i][k] * scores[i];
      wsum += scores[i];
    }
    out.push({ box: mean.map((v) => v / wsum), score: scores[order[0]] });
    order = rest;
  }
  return out;
}

/**
 * One input's faces, best first, in input pixels [x0, y0, x1, y1]: `regress` (A x 16) and
 * `logits` (A) are the network's two outputs, `anchors` ssdAnchors(spec).
 */
export function decode(spec, anchors, regress, logits, minScore = spec.minScore) {
  const s = spec.size;
  const boxes = [];
  const scores = [];
  for (let a = 0; a < logits.length; a++) {
    const z = Math.max(-SCORE_CLIP, Math.min(SCORE_CLIP, logits[a]));
    const score = 1 / (1 + Math.exp(-z));
    if (score < minScore) continue;
    const r = a * 16;
    const cx = regress[r] + anchors[2 * a] * s;
    const cy = regress[r + 1] + anchors[2 * a + 1] * s;
    const w = regress[r + 2];
    const h = regress[r + 3];
    boxes.push([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]);
    scores.push(score);
  }
  return weightedNms(boxes, scores);
}
