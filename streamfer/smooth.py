"""Exponential moving average of class probabilities over time, as the live page smooths
its display (web/smooth.js `ProbabilityEma`; the same maths on both sides, checked by
tests/test_video.py): per-frame predictions flicker between neighbouring expressions, and
averaging steadies them at the cost of a short lag. The weight depends on the time between
frames, not on their count, so the lag is the same at 5 fps and at 30 fps."""

from __future__ import annotations

import math

import numpy as np

SMOOTH_MS = 300.0  # the page's default time constant (web/smooth.js)


class ProbabilityEma:
    """value <- value + (1 - exp(-dt / tau)) * (probs - value); the first frame is taken as is."""

    def __init__(self, time_constant_ms: float = SMOOTH_MS) -> None:
        if time_constant_ms <= 0:
            raise ValueError("the time constant must be > 0 ms")
        self.tau = float(time_constant_ms)
        self.value: np.ndarray | None = None
        self.at = 0.0

    def reset(self) -> None:
        self.value = None

    def update(self, probs: np.ndarray, now_ms: float) -> np.ndarray:
        """Fold in one frame's probabilities (one per class); the averaged ones (sum to 1)."""
        p = np.asarray(probs, np.float64)
        if self.value is None:
            self.value = p.copy()
        else:
            alpha = 1.0 - math.exp(-max(0.0, now_ms - self.at) / self.tau)
            self.value = self.value + alpha * (p - self.value)
        self.at = float(now_ms)
        return self.value.copy()


def smooth_series(times_s: np.ndarray, probs: np.ndarray,
                  time_constant_ms: float = SMOOTH_MS) -> np.ndarray:
    """A whole series (T times, T x C probabilities) through one ProbabilityEma."""
    ema = ProbabilityEma(time_constant_ms)
    out = np.empty(np.shape(probs), np.float64)
    for i, (t, p) in enumerate(zip(times_s, probs, strict=True)):
        out[i] = ema.update(p, float(t) * 1000.0)
    return out
