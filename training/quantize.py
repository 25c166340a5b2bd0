"""Derive the int8 ONNX model the server runs on the CPU (streamfer/onnx_int8.py).

    python -m training.quantize --model models/ferplus-5class.pt \
        --data ../shared/datasets/fer2013/train

Rebuilds the exported model's network and wrapper from its own weights (training/export.py),
exports it to ONNX with its default test-time averaging baked in and a dynamic batch
dimension, then lets ONNX Runtime quantise it statically: int8 weights per output channel,
uint8 activations, QDQ format, activation ranges calibrated on `--count` training faces drawn
evenly from `--data` (never from an evaluation split). The result, models/NAME.int8.onnx,
records the SHA-256 of the .pt it came from; re-run this after every export.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamfer import onnx_int8
from streamfer.faces import load_gray, preprocess_faces, resize_square
from training.cli import opt, parse_config
from training.data import IMAGE_SUFFIXES
from training.export import Deployed, rebuild

log = logging.getLogger(__name__)

# Only the layers that cost: normalisation, the views, softmax and the average over views stay
# float, so the probabilities keep full precision (quantised, they came in steps of 1/255).
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


@dataclass
class QuantizeConfig:
    model: str = opt("models/ferplus-5class.pt", "the exported TorchScript model")
    data: str = opt("../shared/datasets/fer2013/train",
                    "folder of training face images for calibration (searched recursively)")
    count: int = opt(512, "calibration faces, drawn evenly across the sorted file list")
    batch: int = opt(32, "calibration batch size")
    out: str = opt("", "where to write (default: models/NAME.int8.onnx beside the model)")
    command: str = ""


class _Baked(nn.Module):
    """The wrapper with its default test-time averaging fixed: faces in, probabilities out."""

    def __init__(self, deployed: Deployed) -> None:
        super().__init__()
        self.deployed = deployed

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.deployed.predict(faces, self.deployed.tta)


def calibration_faces(folder: Path, count: int, size: int) -> np.ndarray:
    """`count` grayscale faces (N x 1 x size x size uint8) spread over the sorted file list."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {folder}")
    picks = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).astype(int)]
    return np.stack([resize_square(load_gray(f), size) for f in picks])[:, None]


def quantize(cfg: QuantizeConfig) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = Path(cfg.model)
    deployed, meta = rebuild(model)
    size = int(meta["input"]["size"])
    # What the served model sees: its own preprocessing, as the Predictor applies it.
    faces = calibration_faces(Path(cfg.data), cfg.count, size)
    faces = preprocess_faces(faces[:, 0], str(meta.get("preprocess", "none")))[:, None]
    target = Path(cfg.out) if cfg.out else onnx_int8.derived_path(model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(faces[i:i + cfg.batch] for i in range(0, len(faces), cfg.batch))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {onnx_int8.INPUT: batch}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        example = torch.from_numpy(faces[:4])
        torch.onnx.export(
            _Baked(deployed), (example,), str(fp32), input_names=[onnx_int8.INPUT],
            output_names=[onnx_int8.OUTPUT], dynamo=True, external_data=False,
            dynamic_shapes={"faces": {0: torch.export.Dim("n", min=1, max=4096)}})
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, op_types_to_quantize=QUANTIZED_OPS)
    import onnx
    import onnxruntime

    quantized = onnx.load(str(target))
    info = {"calibration": cfg.data, "faces": len(faces), "onnxruntime":
            onnxruntime.__version__, "torch": torch.__version__, "source": model.name,
            "command": cfg.command}
    for key, value in ((onnx_int8.META_SOURCE, onnx_int8.sha256(model)),
                       (onnx_int8.META_TTA, deployed.tta),
                       (onnx_int8.META_INFO, json.dumps(info))):
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(quantized, str(target))
    return target


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(QuantizeConfig, argv, program="training.quantize", doc=__doc__)
    path = quantize(cfg)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
