"""The paper's network: the locally-connected layer, both input geometries, TorchScript."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.network import FERNet, LocallyConnected2d, NetConfig, describe, preset


def naive_local(x: torch.Tensor, layer: LocallyConnected2d) -> torch.Tensor:
    """Reference: an explicit loop over output positions, each with its own weights."""
    k, p, s = layer.kernel, layer.padding, layer.size
    xp = F.pad(x, (p, p, p, p))
    out = torch.empty(x.shape[0], layer.out_channels, s, s)
    for i in range(s):
        for j in range(s):
            patch = xp[:, :, i:i + k, j:j + k].reshape(x.shape[0], -1)  # C*k*k, C-major
            out[:, :, i, j] = patch @ layer.weight[i * s + j] + layer.bias[:, i * s + j]
    return out


def test_local_layer_matches_naive_per_position_reference() -> None:
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, size=5, kernel=3)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(layer(x), naive_local(x, layer), rtol=1e-5, atol=1e-5)


def test_local_layer_with_tied_weights_equals_conv2d() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    layer = LocallyConnected2d(6, 5, size=7, kernel=3)
    with torch.no_grad():
        layer.weight.copy_(conv.weight.reshape(5, -1).t().expand(49, -1, -1))
        layer.bias.copy_(conv.bias[:, None].expand(-1, 49))
    x = torch.randn(3, 6, 7, 7)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_local_layer_positions_are_independent() -> None:
    """Changing one position's weights changes only that output position."""
    layer = LocallyConnected2d(2, 3, size=4, kernel=3)
    x = torch.randn(1, 2, 4, 4)
    before = layer(x).detach()
    with torch.no_grad():
        layer.weight[5] += 1.0
    changed = (layer(x).detach() - before).abs().sum(1)[0] > 0
    assert changed.nonzero().tolist() == [[1, 1]]


@pytest.mark.parametrize(("crop", "side"), [(44, 11), (88, 22)])
def test_paper_geometry(crop: int, side: int) -> None:
    cfg = NetConfig(crop=crop)
    net = FERNet(cfg).eval()
    assert net.feature_side == side
    assert net(torch.zeros(2, 1, crop, crop)).shape == (2, 5)
    rows = describe(cfg)
    names = [r[0].split(":")[1] for r in rows]
    assert names == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "LocallyConnected2d",
                     "LocallyConnected2d", "Linear"]
    # local1: a distinct 3x3x64 -> 32 filter bank (+bias) at each of side*side positions
    assert rows[4][2] == side * side * (64 * 9 * 32 + 32)
    assert rows[4][1] == f"32x{side}x{side}"


@pytest.mark.parametrize("name", ["paper", "paper-bn", "deep", "wide"])
def test_presets_script_and_agree(name: str) -> None:
    net = FERNet(preset(name, classes=7)).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(3, 1, 44, 44)
    torch.testing.assert_close(scripted(x), net(x))


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown network preset"):
        preset("resnet")


def test_zero_head_starts_every_class_at_equal_odds() -> None:
    net = FERNet(preset("paper", crop=44, classes=5, zero_head=True))
    probs = torch.softmax(net(torch.randn(4, 1, 44, 44)), 1)
    torch.testing.assert_close(probs, torch.full((4, 5), 0.2))
    default = FERNet(preset("paper", crop=44, classes=5))
    assert not torch.allclose(torch.softmax(default(torch.randn(4, 1, 44, 44)), 1),
                              torch.full((4, 5), 0.2), atol=0.05)
