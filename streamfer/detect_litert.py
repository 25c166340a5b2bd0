"""BlazeFace's .tflite run by Google's LiteRT interpreter: the server's detector on the CPU.

The same file the page runs (npm `@mediapipe/face_detection`), on the runtime it was made
for (`ai-edge-litert`, XNNPACK kernels), so a CPU server needs no PyTorch to find faces.
streamfer.detect_torch runs the same graph in PyTorch for a GPU's batched stage; the two
give the same outputs (tests/test_detect.py). An interpreter is not thread-safe: each decode
thread gets its own (a few hundred kB each), made on its first call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

REGRESSION_WIDTH = 16  # per anchor: box and 6 keypoints (input pixels); beside 1 score logit
SCORE_CLIP = 100.0  # MediaPipe clips the logits to +-100 before the sigmoid


class LiteRTNet:
    """uint8 N x S x S gray -> (N x A x 16 regressors, N x A scores in 0..1), on the CPU."""

    device = "cpu"

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self._interpreter = Interpreter
        self._threads = threads
        self._local = threading.local()
        interp = self._mine()[0]  # fails here, at load, on a file the interpreter refuses
        _, h, w, _ = interp.get_input_details()[0]["shape"]
        self.input_hw = (int(h), int(w))

    def _mine(self) -> tuple[Any, int, int, int]:
        mine = getattr(self._local, "interp", None)
        if mine is None:
            interp = self._interpreter(model_path=str(self.path), num_threads=self._threads)
            interp.allocate_tensors()
            outs = {int(d["shape"][-1]): d["index"] for d in interp.get_output_details()}
            mine = self._local.interp = (interp, interp.get_input_details()[0]["index"],
                                         outs[REGRESSION_WIDTH], outs[1])
        return mine

    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N x S x S uint8 -> (N x A x 16 regressors, N x A scores)."""
        interp, x, regress_at, scores_at = self._mine()
        regress, logits = [], []
        for gray in inputs:  # the file's batch is 1; a photo's tiles are a handful
            rgb = np.repeat((gray.astype(np.float32) / 127.5 - 1.0)[None, :, :, None], 3, -1)
            interp.set_tensor(x, rgb)
            interp.invoke()
            regress.append(interp.get_tensor(regress_at)[0])
            logits.append(interp.get_tensor(scores_at)[0, :, 0])
        clipped = np.clip(np.stack(logits).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
        scores = 1.0 / (1.0 + np.exp(-clipped))  # float64: exp(100) overflows float32
        return np.stack(regress), scores.astype(np.float32)
