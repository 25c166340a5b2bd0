"""Run a small convolutional .tflite graph as a PyTorch module (weights read from the file).

The server's face detector is the network the phone page runs (MediaPipe's BlazeFace, shipped
as .tflite inside the npm package `@mediapipe/face_detection`). Reading that file directly
means one set of weights, installed by a package manager, for page and server; running it in
PyTorch means the server can batch it on a GPU like the expression model. The flatbuffer is
parsed with the `tflite` package (the generated schema bindings); only the handful of
operators such convolutional detectors use is supported, and anything else is refused at
load time with the operator's name, never silently mis-run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tflite
import torch
import torch.nn.functional as F

_OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_DTYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
           tflite.TensorType.INT32: np.int32}


class UnsupportedGraph(ValueError):
    """The .tflite file uses an operator or layout this converter does not handle."""


def _options(op: tflite.Operator, cls: type) -> object:
    table = op.BuiltinOptions()
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts


def _activation(code: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if code == tflite.ActivationFunctionType.NONE:
        return lambda x: x
    if code == tflite.ActivationFunctionType.RELU:
        return F.relu
    if code == tflite.ActivationFunctionType.RELU6:
        return lambda x: F.hardtanh(x, 0.0, 6.0)
    raise UnsupportedGraph(f"fused activation {code} is not supported")


def _same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding: the odd pixel goes after (bottom/right), unlike PyTorch."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class TfliteNet(torch.nn.Module):
    """The graph of one .tflite subgraph: input N x C x H x W float, outputs as in the file
    (their NHWC shapes, batch first). Activations are kept NCHW inside; the file's NHWC
    layout is only materialised where a RESHAPE or CONCATENATION needs it.

    `gray_input=True` folds the first convolution's colour channels into one, so a single
    grayscale plane (replicated to RGB in the original) costs a third of the first layer.
    """

    def __init__(self, path: str | Path, *, gray_input: bool = False) -> None:
        super().__init__()
        buf = Path(path).read_bytes()
        model = tflite.Model.GetRootAsModel(buf, 0)
        graph = model.Subgraphs(0)
        self.path = Path(path)

        def const(index: int) -> np.ndarray | None:
            t = graph.Tensors(index)
            data = model.Buffers(t.Buffer()).DataAsNumpy()
            if isinstance(data, int) or data.size == 0:
                return None
            dtype = _DTYPES.get(t.Type())
            if dtype is None:
                raise UnsupportedGraph(f"tensor {t.Name()!r} has unsupported type {t.Type()}")
            return np.frombuffer(data.tobytes(), dtype).reshape(t.ShapeAsNumpy())

        self.input_index = int(graph.Inputs(0))
        in_shape = graph.Tensors(self.input_index).ShapeAsNumpy()
        self.input_hw = (int(in_shape[1]), int(in_shape[2]))
        self.output_indices = [int(i) for i in graph.OutputsAsNumpy()]
        self.output_names = [graph.Tensors(i).Name().decode() for i in self.output_indices]
        consts: dict[int, np.ndarray] = {}
        self.steps: list[tuple[str, list[int], int, dict]] = []
        self.params = torch.nn.ParameterList()
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            name = _OP_NAMES[model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()]
            ins = [int(j) for j in op.InputsAsNumpy()]
            out = int(op.Outputs(0))
            if name == "DEQUANTIZE":  # float16 weights -> float32 constants, once
                src = const(ins[0])
                if src is None:
                    raise UnsupportedGraph("DEQUANTIZE of a computed tensor")
                consts[out] = src.astype(np.float32)
                continue
            for j in ins:
                if j >= 0 and j not in consts and (c := const(j)) is not None:
                    consts[j] = c
            self.steps.append(self._compile(name, op, ins, out, consts, graph, gray_input and
                                            ins[0] == self.input_index))

    def _param(self, array: np.ndarray) -> int:
        self.params.append(torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(array)),
                                              requires_grad=False))
        return len(self.params) - 1

    def _compile(self, name: str, op: tflite.Operator, ins: list[int], out: int,
                 consts: dict[int, np.ndarray], graph: tflite.SubGraph,
                 folds_gray: bool) -> tuple[str, list[int], int, dict]:
        def shape(i: int) -> list[int]:
            return [int(s) for s in graph.Tensors(i).ShapeAsNumpy()]

        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = name == "DEPTHWISE_CONV_2D"
            o = _options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            kernel = consts[ins[1]]
            bias = consts[ins[2]] if len(ins) > 2 and ins[2] >= 0 else None
            if depthwise:  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw]
                weight = kernel.transpose(3, 0, 1, 2)
                groups = shape(ins[0])[3]
            else:  # [out, kh, kw, in] -> [out, in, kh, kw]
                weight = kernel.transpose(0, 3, 1, 2)
                groups = 1
                if folds_gray:
                    weight = weight.sum(axis=1, keepdims=True)
            kh, kw = weight.shape[2:]
            _, h, w, _ = shape(ins[0])
            stride = (o.StrideH(), o.StrideW())
            dil = (o.DilationHFactor(), o.DilationWFactor())
            if o.Padding() == tflite.Padding.SAME:
                pt, pb = _same_pad(h, kh, stride[0], dil[0])
                pl, pr = _same_pad(w, kw, stride[1], dil[1])
            else:
                pt = pb = pl = pr = 0
            return ("conv", ins[:1], out, {
                "w": self._param(weight), "b": None if bias is None else self._param(bias),
                "stride": stride, "dilation": dil, "groups": groups,
                "pad": (pl, pr, pt, pb), "act": _activation(o.FusedActivationFunction())})
        if name == "MAX_POOL_2D":
            o = _options(op, tflite.Pool2DOptions)
            k = (o.FilterHeight(), o.FilterWidth())
            stride = (o.StrideH(), o.StrideW())
            _, h, w, _ = shape(ins[0])
            if o.Padding() == tflite.Padding.SAME:
                pt, pb = _same_pad(h, k[0], stride[0])
                pl, pr = _same_pad(w, k[1], stride[1])
            else:
                pt = pb = pl = pr = 0
            return ("maxpool", ins[:1], out, {"k": k, "stride": stride, "pad": (pl, pr, pt, pb),
                                              "act": _activation(o.FusedActivationFunction())})
        if name == "ADD":
            o = _options(op, tflite.AddOptions)
            return ("add", ins, out, {"act": _activation(o.FusedActivationFunction())})
        if name == "RELU":
            return ("relu", ins, out, {})
        if name == "PAD":
            p = consts[ins[1]]  # NHWC [[n0,n1],[t,b],[l,r],[c0,c1]]
            if p[0].any():
                raise UnsupportedGraph("PAD along the batch axis")
            return ("pad", ins[:1], out, {"pad": (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]),
                                                  int(p[1, 1]), int(p[3, 0]), int(p[3, 1]))})
        if name == "RESHAPE":
            new = shape(out)
            return ("reshape", ins[:1], out, {"tail": new[1:], "from4d": len(shape(ins[0])) == 4})
        if name == "CONCATENATION":
            o = _options(op, tflite.ConcatenationOptions)
            rank = len(shape(out))
            axis = o.Axis() % rank
            if rank == 4:
                axis = {0: 0, 1: 2, 2: 3, 3: 1}[axis]  # NHWC axis -> NCHW axis
            return ("concat", ins, out, {"axis": axis,
                                         "act": _activation(o.FusedActivationFunction())})
        if name == "RESIZE_BILINEAR":
            o = _options(op, tflite.ResizeBilinearOptions)
            if o.AlignCorners() == o.HalfPixelCenters():
                raise UnsupportedGraph("RESIZE_BILINEAR needs exactly one of align_corners "
                                       "and half_pixel_centers to match PyTorch")
            _, h, w, _ = shape(out)
            return ("resize", ins[:1], out, {"size": (h, w), "align": bool(o.AlignCorners())})
        raise UnsupportedGraph(f"{self.path.name}: operator {name} is not supported")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        values: dict[int, torch.Tensor] = {self.input_index: x}
        for kind, ins, out, a in self.steps:
            v = values[ins[0]]
            if kind == "conv":
                if any(a["pad"]):
                    v = F.pad(v, a["pad"])
                b = None if a["b"] is None else self.params[a["b"]]
                v = a["act"](F.conv2d(v, self.params[a["w"]], b, a["stride"], 0, a["dilation"],
                                      a["groups"]))
            elif kind == "maxpool":
                if any(a["pad"]):
                    v = F.pad(v, a["pad"], value=float("-inf"))
                v = a["act"](F.max_pool2d(v, a["k"], a["stride"]))
            elif kind == "add":
                v = a["act"](v + values[ins[1]])
            elif kind == "relu":
                v = F.relu(v)
            elif kind == "pad":
                v = F.pad(v, a["pad"])
            elif kind == "reshape":
                if a["from4d"]:
                    v = v.permute(0, 2, 3, 1)
                v = v.reshape([v.shape[0], *a["tail"]])
            elif kind == "resize":
                v = F.interpolate(v, size=a["size"], mode="bilinear",
                                  align_corners=a["align"])
            elif kind == "concat":
                v = a["act"](torch.cat([values[i] for i in ins], dim=a["axis"]))
            values[out] = v
        return [values[i] for i in self.output_indices]
