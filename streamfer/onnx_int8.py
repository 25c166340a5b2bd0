"""The int8 ONNX derivative of a TorchScript model: the server's cheaper CPU path.

The TorchScript file stays the contract between training and serving. `python -m
training.quantize models/NAME.pt` derives `models/NAME.int8.onnx` from it: the same network
and normalisation with the model's default test-time averaging baked in, statically
quantised to int8 by ONNX Runtime (QDQ, per-channel weights, calibrated on training faces).
It records the SHA-256 of the .pt it came from, so a server never runs a derivative of
another model: a stale or foreign file is ignored (with a log line) and the TorchScript runs.

The derivative runs the whole network on int8 kernels (the locally connected layers as
grouped convolutions, training/quantize.py): less CPU time per face than the frozen, fused
TorchScript at every batch size measured, for the same answers on nearly every face
(`python -m bench.model runtimes`; docs/BENCHMARKS.md, "The model alone", and its result file).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SUFFIX = ".int8.onnx"
INPUT = "faces"  # N x 1 x S x S uint8
OUTPUT = "probs"  # N x C float32
META_SOURCE = "streamfer_source_sha256"
META_TTA = "streamfer_tta"
META_INFO = "streamfer_quantization"  # JSON: calibration set, count, tool versions
RUNTIMES = ("auto", "torchscript", "onnx-int8")


def derived_path(model: str | Path) -> Path:
    """models/NAME.pt -> models/NAME.int8.onnx"""
    model = Path(model)
    return model.with_name(model.stem + SUFFIX)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Int8Session:
    """One ONNX Runtime session on the CPU: N x S x S uint8 faces -> N x C probabilities."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads wait asleep, not spinning: the server's other threads need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.source_sha256 = meta.get(META_SOURCE, "")
        self.tta = meta.get(META_TTA, "")
        self.info = json.loads(meta.get(META_INFO, "{}"))

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(faces, dtype=np.uint8)[:, None]
        return self.session.run([OUTPUT], {INPUT: x})[0]


def load_for(model: Path, tta: str, threads: int) -> tuple[Int8Session | None, str]:
    """The derivative of `model` for test-time averaging `tta`, or None and why not."""
    path = derived_path(model)
    if not path.is_file():
        return None, f"no {path.name} beside the model (python -m training.quantize makes it)"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "onnxruntime is not installed"
    try:
        session = Int8Session(path, threads)
    except Exception as exc:  # a corrupt file must not stop the server
        return None, f"{path.name} does not load: {exc}"
    if session.source_sha256 != sha256(model):
        return None, f"{path.name} was made from another model file (re-run training.quantize)"
    if session.tta != tta:
        return None, f"{path.name} averages {session.tta!r}, the server was asked for {tta!r}"
    return session, f"{path.name}"
