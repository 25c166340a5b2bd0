// From the live <video> to small encoded images, and the cheap checks that decide whether
// a frame is worth sending at all. Everything is grayscale: the model sees gray faces, and a
// gray JPEG is smaller to send and to decode.

import { CROP_SIZE, cropSquare, drawCrop, JPEG_QUALITY, toGray } from "./crop.js";

export { CROP_SIZE } from "./crop.js";

// A full frame is sent at up to 640 px wide (a 640x480 camera frame whole): at 320 px a face
// across an eighth of the frame is too small for the server's detector. A gray 640x480 JPEG
// stays far below the server's max_frame_bytes.
export const FULL_WIDTH = 640;
const THUMB_W = 32;
const THUMB_H = 24;

// A frame darker than this (mean gray level, 0-255) cannot show a face the model can read.
export const DARK_LEVEL = 28;
// Mean absolute change per thumbnail pixel below which a frame counts as "unchanged": the
// reply would repeat the last one. Camera noise alone stays under it only when the scene is
// truly still.
export const STILL_LEVEL = 0.6;

function canvas(w, h) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  return c;
}

function encode(c) {
  return new Promise((resolve, reject) => {
    c.toBlob(
      (blob) => (blob ? blob.arrayBuffer().then(resolve, reject) : reject(new Error("JPEG encode failed"))),
      "image/jpeg",
      JPEG_QUALITY,
    );
  });
}

export class FrameGrabber {
  constructor() {
    this.thumb = canvas(THUMB_W, THUMB_H);
    this.thumbCtx = this.thumb.getContext("2d", { willReadFrequently: true });
    this.full = canvas(FULL_WIDTH, 480);
    this.fullCtx = this.full.getContext("2d", { willReadFrequently: true });
    this.crop = canvas(CROP_SIZE, CROP_SIZE);
    this.cropCtx = this.crop.getContext("2d", { willReadFrequently: true });
    this.lastSent = null; // thumbnail luma of the last frame sent
  }

  /** Mean brightness and change since the last sent frame, from a 32x24 thumbnail. */
  measure(video) {
    this.thumbCtx.drawImage(video, 0, 0, THUMB_W, THUMB_H);
    const px = this.thumbCtx.getImageData(0, 0, THUMB_W, THUMB_H).data;
    const luma = new Uint8Array(THUMB_W * THUMB_H);
    let sum = 0;
    let diff = 0;
    for (let i = 0, j = 0; j < luma.length; i += 4, j += 1) {
      const y = (px[i] * 77 + px[i + 1] * 150 + px[i + 2] * 29) >> 8;
      luma[j] = y;
      sum += y;
      if (this.lastSent) diff += Math.abs(y - this.lastSent[j]);
    }
    return {
      luma,
      mean: sum / luma.length,
      change: this.lastSent ? diff / luma.length : Infinity,
    };
  }

  /** Remember a measured frame as the last one sent (the reference for "unchanged"). */
  accept(measured) {
    this.lastSent = measured.luma;
  }

  forget() {
    this.lastSent = null;
  }

  /** The whole frame, FULL_WIDTH px wide, as gray JPEG; `scale` maps its pixels to video pixels. */
  async fullFrame(video) {
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    const w = Math.min(FULL_WIDTH, vw);
    const h = Math.max(1, Math.round((vh * w) / vw));
    if (this.full.width !== w || this.full.height !== h) {
      this.full.width = w;
      this.full.height = h;
    }
    this.fullCtx.drawImage(video, 0, 0, w, h);
    toGray(this.fullCtx, w, h);
    return { bytes: await encode(this.full), scale: vw / w };
  }

  /**
   * A CROP_SIZE square gray JPEG around a face box (video pixels), framed with the detector's
   * `framing` from the greeting (crop.js).
   */
  async faceCrop(video, box, framing) {
    const square = cropSquare(box, framing);
    drawCrop(this.cropCtx, video, square);
    return { bytes: await encode(this.crop), box: square };
  }
}
