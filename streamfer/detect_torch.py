"""BlazeFace's .tflite graph run in PyTorch (streamfer.tflite_torch): the GPU's detector.

On a GPU server face detection is a batched stage on the model's device, like the
expression model (streamfer/server/pipeline.py, DetectBatcher): the graph is read into
PyTorch and traced once. The CPU runs the same file on LiteRT instead
(streamfer.detect_litert); both give the same outputs (tests/test_detect.py). Needs the
`[gpu]` extra (torch and the `tflite` flatbuffer parser).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamfer.detect_litert import SCORE_CLIP
from streamfer.tflite_torch import TfliteNet


class _Net(torch.nn.Module):
    """uint8 N x S x S gray -> (N x A x 16 regressors, N x A scores in 0..1)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        regress, logits = self.net(x.unsqueeze(1).float() / 127.5 - 1.0)
        return regress, torch.sigmoid(logits.squeeze(-1).clamp(-SCORE_CLIP, SCORE_CLIP))


class TorchNet:
    """The same outputs as detect_litert.LiteRTNet, from N inputs at once on `device`;
    thread-safe (inference holds no per-call state)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.path = Path(path)
        self.device = str(device)
        port = TfliteNet(self.path, gray_input=True)
        self.input_hw = port.input_hw
        net = _Net(port).eval().to(self.device)
        example = torch.full((1, *self.input_hw), 128, dtype=torch.uint8, device=self.device)
        # Traced (one graph, no Python per layer). Not passed through oneDNN's
        # optimize_for_inference: on these small layers it doubled the CPU time (1.4 -> 3.9
        # ms per 128 px input, one core).
        with torch.inference_mode():
            self.module = torch.jit.trace(net, example, check_trace=False)

    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N x S x S uint8 -> (N x A x 16 regressors, N x A scores)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device)
            regress, scores = self.module(x)
            return regress.float().cpu().numpy(), scores.float().cpu().numpy()
