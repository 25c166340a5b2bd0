"""The int8 ONNX derivative: made by training.quantize, picked up by the server's Predictor
only when it was made from the very model file it serves, with the same averaging."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from streamfer import onnx_int8
from streamfer.model import ModelError, Predictor
from training.network import FERNet, NetConfig
from training.quantize import ServedNet


def test_the_derivative_runs_by_default_and_agrees_with_the_torchscript(
        quantized: tuple[Path, np.ndarray]) -> None:
    model, faces = quantized
    int8 = Predictor(model, device="cpu")  # runtime auto
    ref = Predictor(model, device="cpu", runtime="torchscript")
    assert (int8.runtime, ref.runtime) == ("onnx-int8", "torchscript")
    for n in (1, 5, 48):  # any batch size: the batch dimension is dynamic
        a, b = int8.forward(faces[:n]), ref.forward(faces[:n])
        assert a.shape == b.shape == (n, 5) and a.dtype == np.float32
        np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-4)
        assert np.abs(a - b).max() < 0.05  # int8 rounding, not another model


@pytest.mark.parametrize("cfg", [
    NetConfig(crop=44, classes=5, conv_channels=(8, 8), local_channels=4),  # the paper's shape
    NetConfig(crop=44, classes=3, conv_channels=(4, 8, 8), conv_kernel=3, convs_per_stage=2,
              local_channels=6, batchnorm=True),  # the shipped models' shape, smaller
])
def test_the_graph_that_is_quantised_computes_the_network(cfg: NetConfig) -> None:
    """The export rewrites the network (batch norm folded, locally connected layers as
    grouped convolutions over positions, the full layer's columns reordered): same logits."""
    torch.manual_seed(0)
    net = FERNet(cfg).eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for m in net.modules():
            if hasattr(m, "bias") and isinstance(m.bias, torch.nn.Parameter):
                m.bias.uniform_(-0.2, 0.2)  # LC biases start at zero: give them values
        x = torch.randn(7, 1, cfg.crop, cfg.crop)
        want, got = net(x), ServedNet(net)(x)
    assert got.shape == want.shape == (7, cfg.classes)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_derivative_of_another_model_file_is_never_run(
        quantized: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    model, _ = quantized
    other = tmp_path / "tiny.pt"
    torch.manual_seed(1)  # same architecture, other weights
    m = torch.jit.load(str(model))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)
    extra = {"metadata.json": ""}
    torch.jit.load(str(model), _extra_files=extra)
    torch.jit.save(m, str(other), _extra_files=extra)
    shutil.copy(onnx_int8.derived_path(model), onnx_int8.derived_path(other))
    assert Predictor(other, device="cpu").runtime == "torchscript"  # auto falls back
    with pytest.raises(ModelError, match="made from another model file"):
        Predictor(other, device="cpu", runtime="onnx-int8")


def test_other_averaging_runs_the_torchscript(quantized: tuple[Path, np.ndarray]) -> None:
    model, _ = quantized
    assert Predictor(model, device="cpu", tta="ten").runtime == "torchscript"
    with pytest.raises(ModelError, match="averages 'mirror'"):
        Predictor(model, device="cpu", tta="centre", runtime="onnx-int8")


def test_without_a_derivative_auto_is_torchscript_and_onnx_int8_says_how_to_make_it(
        tiny_model_path: Path) -> None:
    assert Predictor(tiny_model_path, device="cpu").runtime == "torchscript"
    with pytest.raises(ModelError, match=r"training\.quantize"):
        Predictor(tiny_model_path, device="cpu", runtime="onnx-int8")


def test_the_shipped_model_has_a_current_derivative() -> None:
    """models/NAME.int8.onnx must be re-made whenever NAME.pt changes."""
    root = Path(__file__).resolve().parent.parent
    for model in sorted((root / "models").glob("*.pt")):
        derived = onnx_int8.derived_path(model)
        assert derived.is_file(), f"python -m training.quantize --model {model}"
        session = onnx_int8.Int8Session(derived, 1)
        assert session.source_sha256 == onnx_int8.sha256(model), (
            f"{derived.name} is stale: python -m training.quantize --model {model}")
