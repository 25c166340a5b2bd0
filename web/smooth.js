// Exponential moving average of the class probabilities over recent frames. Per-frame
// predictions flicker between neighbouring expressions; averaging steadies the display at
// the cost of a short lag. The weight depends on the time between frames, not the frame
// count, so the lag feels the same at 5 fps and at 30 fps.

export class ProbabilityEma {
  constructor(timeConstantMs = 300) {
    this.tau = timeConstantMs;
    this.value = null;
    this.at = 0;
  }

  reset() {
    this.value = null;
  }

  /** Fold in one frame's probabilities {class: p}; returns the averaged ones (still sum to 1). */
  update(probs, now = performance.now()) {
    if (this.value === null) {
      this.value = { ...probs };
    } else {
      const alpha = 1 - Math.exp(-Math.max(0, now - this.at) / this.tau);
      for (const name of Object.keys(probs)) {
        const old = this.value[name] ?? probs[name];
        this.value[name] = old + alpha * (probs[name] - old);
      }
    }
    this.at = now;
    return { ...this.value };
  }
}

/** The most probable class of {class: p}. */
export function argmax(probs) {
  let best = null;
  for (const [name, p] of Object.entries(probs)) {
    if (best === null || p > probs[best]) best = name;
  }
  return best;
}
