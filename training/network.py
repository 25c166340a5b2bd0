"""The paper's five-layer CNN (Song, Kim, Jeon 2014) and its stronger variants.

conv -> pool -> conv -> pool -> locally-connected -> locally-connected -> fully-connected.
The input geometry is a parameter: the paper crops 88x88 from 96x96 faces, our 48x48 data
sets give 44x44 crops at the same ratio. Everything stays TorchScript-able because the
exported file is the contract with the server.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """Shape of the network. The defaults are the paper's layers, exactly."""

    crop: int = 44  # input side S (SxS grayscale crop)
    classes: int = 5
    conv_channels: tuple[int, ...] = (64, 64)  # one conv stage (conv(s) + 3x3/2 pool) each
    conv_kernel: int = 5
    convs_per_stage: int = 1  # >1 stacks more convs before each pool (deeper variant)
    local_channels: int = 32
    local_kernel: int = 3
    dropout: float = 0.5  # after each locally-connected layer, as in the paper
    batchnorm: bool = False  # a deviation from the paper; see docs/RESULTS.md
    # Start the output layer at zero. Without batch norm the pools and dropout grow the
    # activations, so PyTorch's default init starts the logits with a std near 3 (a loss
    # near 4, not ln C); at zero every class starts at equal odds.
    zero_head: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# Named presets so a model can be rebuilt from a short name in logs, flags and metadata.
PRESETS: dict[str, dict] = {
    "paper": {},
    "paper-bn": {"batchnorm": True},
    # Deeper, still conv, conv, local, local, full in shape: a third conv stage, two 3x3
    # convs per stage (the receptive field of one 5x5), batch norm, wider local layers. The
    # shipped model's network.
    "deep": {
        "conv_channels": (32, 64, 128),
        "conv_kernel": 3,
        "convs_per_stage": 2,
        "local_channels": 64,
        "batchnorm": True,
    },
}
# `deep` with its first two stages twice as wide (64, 128, 128): about 2.5x the multiply-adds
# at 6% more parameters (the local layers, which hold most of them, are unchanged), so the
# file stays under 20 MB and int8 serving stays inside 5 ms per face.
PRESETS["wide"] = {**PRESETS["deep"], "conv_channels": (64, 128, 128)}


def preset(name: str, **overrides: object) -> NetConfig:
    """A NetConfig from a preset name plus explicit overrides (e.g. crop=88, classes=7)."""
    if name not in PRESETS:
        raise ValueError(f"unknown network preset {name!r}; choose from {sorted(PRESETS)}")
    fields = {**PRESETS[name], **overrides}
    if "conv_channels" in fields:
        fields["conv_channels"] = tuple(fields["conv_channels"])  # type: ignore[arg-type]
    return NetConfig(**fields)  # type: ignore[arg-type]


class LocallyConnected2d(nn.Module):
    """Convolution without weight sharing: a separate filter bank at every output position.

    Vectorised as unfold + one batched matmul over positions (no Python loop), with "same"
    padding and stride 1 as the paper's local layers use.
    """

    def __init__(self, in_channels: int, out_channels: int, size: int, kernel: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size = size
        self.kernel = kernel
        self.padding = kernel // 2
        positions = size * size
        fan_in = in_channels * kernel * kernel
        # weight[l] maps the unfolded patch at position l (C*k*k values) to out_channels.
        self.weight = nn.Parameter(torch.empty(positions, fan_in, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels, positions))
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_in))  # He init, ReLU follows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        patches = F.unfold(x, self.kernel, padding=self.padding)  # N x (C*k*k) x L
        out = torch.bmm(patches.permute(2, 0, 1), self.weight.to(patches.dtype))  # L x N x O
        out = out.permute(1, 2, 0) + self.bias.to(out.dtype)  # N x O x L
        return out.reshape(n, self.out_channels, self.size, self.size)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, size={self.size}, kernel={self.kernel}"
        )


def _pooled(size: int) -> int:
    """Side after a 3x3, stride-2, padding-1 max-pool: halves (rounding up)."""
    return (size + 2 - 3) // 2 + 1


class FERNet(nn.Module):
    """conv, conv, local, local, full. Returns logits; softmax lives in the exported model."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        channels, side = 1, cfg.crop
        for width in cfg.conv_channels:
            for _ in range(cfg.convs_per_stage):
                layers.append(
                    nn.Conv2d(channels, width, cfg.conv_kernel, padding=cfg.conv_kernel // 2,
                              bias=not cfg.batchnorm)
                )
                if cfg.batchnorm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            side = _pooled(side)
        for _ in range(2):
            layers.append(LocallyConnected2d(channels, cfg.local_channels, side, cfg.local_kernel))
            if cfg.batchnorm:
                layers.append(nn.BatchNorm2d(cfg.local_channels))
            layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Dropout(cfg.dropout))
            channels = cfg.local_channels
        self.features = nn.Sequential(*layers)
        self.full = nn.Linear(channels * side * side, cfg.classes)
        self.feature_side = side
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if cfg.zero_head:
            nn.init.zeros_(self.full.weight)
            nn.init.zeros_(self.full.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.full(torch.flatten(self.features(x), 1))


def describe(cfg: NetConfig) -> list[tuple[str, str, int, int]]:
    """Per layer: (name, output shape, parameters, neurons) for the README/RESULTS tables."""
    net = FERNet(cfg).eval()
    rows: list[tuple[str, str, int, int]] = []
    x = torch.zeros(1, 1, cfg.crop, cfg.crop)
    with torch.no_grad():
        for i, layer in enumerate(net.features):
            x = layer(x)
            if isinstance(layer, (nn.Conv2d, LocallyConnected2d, nn.MaxPool2d)):
                params = sum(p.numel() for p in layer.parameters())
                rows.append((f"{i}:{type(layer).__name__}", "x".join(map(str, x.shape[1:])),
                             params, x[0].numel()))
        x = net.full(torch.flatten(x, 1))
    rows.append(("full:Linear", str(x.shape[1]), sum(p.numel() for p in net.full.parameters()),
                 x.shape[1]))
    return rows


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def markdown_table(cfg: NetConfig) -> str:
    """The per-layer table of `describe` as Markdown."""
    lines = ["| layer | output (C x H x W) | parameters | neurons |", "|---|---|---:|---:|"]
    rows = describe(cfg)
    lines += [f"| {n} | {shape} | {p:,} | {k:,} |" for n, shape, p, k in rows]
    lines.append(f"| **total** | | **{sum(r[2] for r in rows):,}** | "
                 f"**{sum(r[3] for r in rows if 'Pool' not in r[0]):,}** |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m training.network: the tables in docs/RESULTS.md
    for name, crop in [("paper", 44), ("paper", 88), ("deep", 44)]:
        print(f"\n### `{name}` at {crop}x{crop}\n\n{markdown_table(preset(name, crop=crop))}")
