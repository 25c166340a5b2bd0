// Stable face ids across frames: a detection takes the id of the previous frame's face it
// overlaps most (IoU above MATCH_IOU, each previous face matched once), else a new id.
// Faces unseen in a frame are forgotten: the engine searches the whole frame again whenever
// a tracked face is not found where it was.

import { iou } from "./blazeface.js";

export const MATCH_IOU = 0.3;

const corners = (b) => [b.x, b.y, b.x + b.w, b.y + b.h];

export class IouTracker {
  constructor(maxFaces = 1) {
    this.maxFaces = maxFaces;
    this.tracks = []; // [{id, box}] the previous frame's faces
    this.nextId = 1;
  }

  /** Faces [{box, score}] -> the `maxFaces` largest, each with an `id`; they become the tracks. */
  update(faces) {
    const kept = [...faces].sort((a, b) => b.box.w * b.box.h - a.box.w * a.box.h)
      .slice(0, this.maxFaces);
    const free = new Set(this.tracks);
    const out = kept.map((face) => {
      let best = null;
      let bestIou = MATCH_IOU;
      for (const t of free) {
        const v = iou(corners(t.box), corners(face.box));
        if (v > bestIou) {
          best = t;
          bestIou = v;
        }
      }
      if (best) free.delete(best);
      return { ...face, id: best ? best.id : this.nextId++ };
    });
    this.tracks = out.map(({ id, box }) => ({ id, box }));
    return out;
  }

  reset() {
    this.tracks = [];
  }
}
