"""Derive the int8 ONNX model the server runs on the CPU (streamfer/onnx_int8.py).

    python -m training.quantize --model models/ferplus-5class.pt \
        --data ../shared/datasets/fer2013/train

Rebuilds the exported model's network and wrapper from its own weights (training/export.py),
rewrites the network into the same function in a form ONNX Runtime's int8 kernels run whole
(`ServedNet`: batch norm folded, each locally connected layer one grouped convolution),
exports it to ONNX with its default test-time averaging baked in and a dynamic batch
dimension, then lets ONNX Runtime quantise it statically: int8 weights per output channel,
uint8 activations, QDQ format, activation ranges calibrated on `--count` training faces drawn
evenly from `--data` (never from an evaluation split). The result, models/NAME.int8.onnx,
records the SHA-256 of the .pt it came from; re-run this after every export.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from streamfer import contract, onnx_int8
from streamfer.faces import load_gray, preprocess_faces, resize_square
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from training.cli import opt, parse_config
from training.data import IMAGE_SUFFIXES
from training.export import Deployed, rebuild
from training.network import FERNet, LocallyConnected2d

log = logging.getLogger(__name__)

# Everything from the first convolution to the logits runs on uint8 tensors: the layers, and the
# ReLUs, pools, gathers and reshapes between them (left in float, each cost a dequantise and a
# requantise, and the float gathers and transposes cost more than the int8 convolutions
# beside them). Normalisation, the views, softmax and the average over views stay float, so
# the probabilities keep full precision (quantised, they came in steps of 1/255).
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Relu", "MaxPool", "Gather", "Transpose", "Reshape"]


@dataclass
class QuantizeConfig:
    model: str = opt(str(DEFAULT_MODEL), "the exported TorchScript model")
    data: str = opt(str(DEFAULT_DATASETS / "fer2013/train"),
                    "folder of training face images for calibration (searched recursively)")
    count: int = opt(512, "calibration faces, drawn evenly across the sorted file list")
    batch: int = opt(32, "calibration batch size")
    out: str = opt("", "where to write (default: models/NAME.int8.onnx beside the model)")
    # The alternatives weighed beside the shipped choice (the defaults), measured side by side
    # in docs/notebook/2026-12-02-speed-history.md.
    graph: str = opt("served", "'served': the network rewritten for int8 kernels (ServedNet); "
                     "'as-trained': its own unfold + batched matmul", ["served", "as-trained"])
    format: str = opt("qdq", "ONNX Runtime's quantised-model format", ["qdq", "qoperator"])
    per_channel: bool = opt(True, "int8 weight scales per output channel (else per tensor)")
    # ONNX Runtime's u8 x s8 kernels on AVX2 CPUs without VNNI add pairs of products in 16
    # bits, which saturate with full 8-bit weights; 7-bit weights keep one file accurate on
    # every x86 CPU, at no measurable cost in speed (docs/notebook, the int8 entry).
    reduce_range: bool = opt(True, "7-bit weights, accurate on every x86 CPU (full 8-bit "
                             "weights saturate on AVX2 without VNNI)")
    command: str = ""


class _LocalAsGroupedConv(nn.Module):
    """A locally connected layer (its batch norm folded in) + ReLU as one grouped 1x1 conv.

    Works on faces laid out N x L x C (L = positions, channels last), which it returns for the
    next layer. The k x k taps at each position are one Gather of a constant index (taps that
    fall outside the map point anywhere and get zero weights: no padding), the patches form a
    1 x (L*k*k*C) x N x 1 image, and a convolution with L groups applies each position's own
    weights: the batch lies along the height, so each group is one GEMM over the whole batch
    with its int8 weights read once. ONNX Runtime's NHWC int8 convolution sees exactly the
    memory this layout already has (the transposes here cancel with its own). The unfold +
    batched matmul of training/network.py exported as float MatMuls with dequantised weights,
    float gathers and transposes: two thirds of the int8 model's time.
    """

    def __init__(self, lc: LocallyConnected2d, bn: nn.BatchNorm2d | None) -> None:
        super().__init__()
        k, s, pad, c = lc.kernel, lc.size, lc.padding, lc.in_channels
        positions, _, out = lc.weight.shape
        weight = lc.weight.detach().reshape(positions, c, k * k, out).clone()  # unfold's order
        bias = lc.bias.detach().t()  # L x O
        if bn is not None:
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            weight = weight * scale
            bias = (bias - bn.running_mean) * scale + bn.bias.detach()
        index = torch.empty(positions, k * k, dtype=torch.long)
        for y in range(s):
            for x in range(s):
                for tap in range(k * k):
                    yy, xx = y + tap // k - pad, x + tap % k - pad
                    inside = 0 <= yy < s and 0 <= xx < s
                    index[y * s + x, tap] = yy * s + xx if inside else y * s + x
                    if not inside:
                        weight[y * s + x, :, tap] = 0
        self.positions, self.fan_in = positions, k * k * c
        self.register_buffer("index", index.reshape(-1))
        self.register_buffer("weight", weight.permute(0, 3, 2, 1).reshape(  # taps, channels
            positions * out, self.fan_in, 1, 1).contiguous())
        self.register_buffer("bias", bias.reshape(-1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # N x L x C -> N x L x O
        n = x.shape[0]
        patches = torch.index_select(x, 1, self.index)  # N x L*k*k x C
        patches = patches.reshape(1, n, 1, self.positions * self.fan_in).permute(0, 3, 1, 2)
        y = torch.relu(F.conv2d(patches, self.weight, self.bias, groups=self.positions))
        return y.permute(0, 2, 3, 1).reshape(n, self.positions, -1)


class ServedNet(nn.Module):
    """FERNet's function, rewritten for ONNX Runtime's int8 CPU kernels (see
    `_LocalAsGroupedConv`): batch norm folded into the convolutions, the locally connected
    layers in a channels-last layout, the full layer's columns reordered to match it. Dropout
    is dropped (evaluation only). Same logits as the network to float rounding
    (tests/test_onnx_int8.py)."""

    def __init__(self, net: FERNet) -> None:
        super().__init__()
        head: list[nn.Module] = []
        local: list[nn.Module] = []
        layers = [m for m in net.eval().features if not isinstance(m, nn.Dropout)]
        for i, m in enumerate(layers):
            after = layers[i + 1] if i + 1 < len(layers) else None
            bn = after if isinstance(after, nn.BatchNorm2d) else None
            if isinstance(m, LocallyConnected2d):
                then = layers[i + 2] if bn is not None and i + 2 < len(layers) else after
                if not isinstance(then, nn.ReLU):  # the grouped conv applies it
                    raise ValueError("ServedNet expects a ReLU after each locally connected "
                                     "layer (and its batch norm)")
                local.append(_LocalAsGroupedConv(m, bn))
                self.side, self.channels = m.size, m.out_channels
            elif isinstance(m, nn.Conv2d):
                head.append(fuse_conv_bn_eval(m, bn) if bn is not None else copy.deepcopy(m))
            elif isinstance(m, (nn.ReLU, nn.MaxPool2d)) and not local:
                head.append(copy.deepcopy(m))
            elif not isinstance(m, (nn.BatchNorm2d, nn.ReLU)):  # those were folded in above
                raise ValueError(f"ServedNet does not know {type(m).__name__} here")
        self.head, self.local = nn.Sequential(*head), nn.Sequential(*local)
        weight = net.full.weight.detach()  # columns in flatten's (channel, position) order
        self.register_buffer("full_weight", weight.reshape(-1, self.channels, self.side ** 2)
                             .transpose(1, 2).reshape(weight.shape[0], -1).contiguous())
        self.register_buffer("full_bias", net.full.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        n, c = x.shape[0], x.shape[1]
        x = self.local(x.permute(0, 2, 3, 1).reshape(n, -1, c))
        return F.linear(x.reshape(n, -1), self.full_weight, self.full_bias)


class _Baked(nn.Module):
    """The wrapper with its default test-time averaging fixed: faces in, probabilities out."""

    def __init__(self, deployed: Deployed, rewrite: bool = True) -> None:
        super().__init__()
        self.deployed = Deployed(ServedNet(deployed.net) if rewrite else deployed.net,
                                 deployed.size, deployed.crop, deployed.mean, deployed.std,
                                 deployed.tta).eval()

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.deployed.predict(faces, self.deployed.tta)


def calibration_faces(folder: Path, count: int, size: int) -> np.ndarray:
    """`count` grayscale faces (N x 1 x size x size uint8) spread over the sorted file list."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {folder}")
    picks = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).astype(int)]
    return np.stack([resize_square(load_gray(f), size) for f in picks])[:, None]


def export_onnx(deployed: Deployed, path: Path, rewrite: bool = True) -> Path:
    """The float ONNX export that is quantised: N x 1 x S x S uint8 faces -> N x C
    probabilities with the model's default averaging, a dynamic batch dimension."""
    example = torch.full((4, 1, deployed.size, deployed.size), 128, dtype=torch.uint8)
    torch.onnx.export(
        _Baked(deployed, rewrite).eval(), (example,), str(path), input_names=[onnx_int8.INPUT],
        output_names=[onnx_int8.OUTPUT], dynamo=True, external_data=False,
        dynamic_shapes={"faces": {0: torch.export.Dim("n", min=1, max=4096)}})
    return path


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
    size = meta.input_size
    # What the served model sees: its own preprocessing, as the Predictor applies it.
    faces = calibration_faces(Path(cfg.data), cfg.count, size)
    faces = preprocess_faces(faces[:, 0], meta.preprocess)[:, None]
    target = Path(cfg.out) if cfg.out else onnx_int8.derived_path(model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(faces[i:i + cfg.batch] for i in range(0, len(faces), cfg.batch))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {onnx_int8.INPUT: batch}

    import onnx
    import onnxruntime

    info = {"calibration": cfg.data, "faces": len(faces), "onnxruntime":
            onnxruntime.__version__, "torch": torch.__version__, "source": model.name,
            "graph": cfg.graph, "format": cfg.format, "per_channel": cfg.per_channel,
            "reduce_range": cfg.reduce_range, "command": cfg.command}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        int8 = Path(tmp) / "int8.onnx"
        export_onnx(deployed, fp32, rewrite=cfg.graph == "served")
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(int8), Reader(),
                        quant_format=QuantFormat.QDQ if cfg.format == "qdq" else
                        QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                        reduce_range=cfg.reduce_range, op_types_to_quantize=QUANTIZED_OPS)
        quantized = onnx.load(str(int8))
    for key, value in ((onnx_int8.META_SOURCE, onnx_int8.sha256(model)),
                       (onnx_int8.META_TTA, deployed.tta),
                       (onnx_int8.META_INFO, json.dumps(info))):
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    # A server starting meanwhile loads the old derivative or the new one, never half of one.
    contract.replace_atomically(target,
                                lambda tmp: onnx.save(quantized, str(tmp), format="protobuf"))
    return target


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(QuantizeConfig, argv, program="training.quantize", doc=__doc__)
    path = quantize(cfg)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
