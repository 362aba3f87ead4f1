"""The torch operators of the space: stem, the three cell types, edges, decoder and the soft gate.

They mirror ``routespace.spaces.layout`` op for op (the cost model); tests check the two against fvcore.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import res2net_width
from .space import RoutingSpace, edge_kind


def upsample_to(x: torch.Tensor, size: tuple[int, int] | list[int] | torch.Size) -> torch.Tensor:
    """Bilinear upsampling to an exact target size (safe for sizes that are not powers of two).

    While tracing, the size stays a traced value, so exported graphs follow the input size."""
    if not torch.jit.is_tracing():
        size = (int(size[0]), int(size[1]))
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def sep_conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
    ]


class Stem(nn.Module):
    """conv3x3/2 3->C, sep-conv C->C, sep-conv/2 C->C, each followed by BN and ReLU (stride 4 out)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            *sep_conv(c, c), nn.BatchNorm2d(c), nn.ReLU(),
            *sep_conv(c, c, stride=2), nn.BatchNorm2d(c), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SepConvCell(nn.Module):
    """Two times [ReLU, depthwise 3x3, pointwise 1x1, BN] (the residual is added by the node)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.ReLU(), *sep_conv(c, c), nn.BatchNorm2d(c),
            nn.ReLU(), *sep_conv(c, c), nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BasicCell(nn.Module):
    """HRNet basic block without its residual: conv3x3, BN, ReLU, conv3x3, BN."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Res2NetCell(nn.Module):
    """Res2Net-style cell: 1x1 reduce to C/2, split into 4 groups, hierarchical 3x3 convs on groups 2-4
    (each also receiving the previous group's output), concat, 1x1 expand to C, BN."""

    def __init__(self, channels: int):
        super().__init__()
        hidden, width = res2net_width(channels)
        self.width = width
        self.reduce = _conv_bn_relu(channels, hidden, 1)
        self.convs = nn.ModuleList(_conv_bn_relu(width, width, 3) for _ in range(3))
        self.expand = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.reduce(x), self.width, dim=1)
        outs = [parts[0]]
        prev = None
        for i, conv in enumerate(self.convs):
            inp = parts[i + 1] if prev is None else parts[i + 1] + prev
            prev = conv(inp)
            outs.append(prev)
        return self.expand(torch.cat(outs, dim=1))


CELLS = {"sepconv": SepConvCell, "res2net": Res2NetCell, "basic": BasicCell}


def make_cell(cell: str, channels: int) -> nn.Module:
    return CELLS[cell](channels)


class Transition(nn.Module):
    """An edge between adjacent layers: keep = identity; down = ReLU, conv1x1/2, BN;
    up = ReLU, conv1x1, BN, bilinear x2 (the conv runs at the lower resolution)."""

    def __init__(self, space: RoutingSpace, src: int, dst: int):
        super().__init__()
        self.kind = edge_kind(src, dst)
        cs, cd = space.channels(src), space.channels(dst)
        if self.kind == "keep":
            self.body = nn.Identity()
        else:
            stride = 2 if self.kind == "down" else 1
            self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(cs, cd, 1, stride=stride, bias=False), nn.BatchNorm2d(cd))

    def forward(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        y = self.body(x)
        if self.kind == "up":
            y = upsample_to(y, out_size)
        return y


class Decoder(nn.Module):
    """Top-down from the coarsest active scale to stride 4: conv1x1 C_s -> C_{s-1}, BN, ReLU, bilinear x2,
    add the next finer last-layer feature; conv3x3 -> classes at stride 4; bilinear to the input size."""

    def __init__(self, space: RoutingSpace, top_scale: int):
        super().__init__()
        self.top_scale = top_scale
        self.lateral = nn.ModuleList(
            _conv_bn_relu(space.channels(s), space.channels(s - 1), 1) for s in range(top_scale, 0, -1)
        )
        self.head = nn.Conv2d(space.base_channels, space.num_classes, 3, padding=1, bias=True)

    def forward(
        self, feats: list[torch.Tensor | None], sizes: list[tuple[int, int]], out_size: tuple[int, int]
    ) -> torch.Tensor:
        """``feats[s]`` is the last-layer feature at scale s or None; ``sizes[s]`` its spatial size."""
        d: torch.Tensor | None = None
        for i, s in enumerate(range(self.top_scale, 0, -1)):
            f = feats[s]
            d = f if d is None else (d if f is None else d + f)
            assert d is not None, "the top scale must be active"
            d = upsample_to(self.lateral[i](d), sizes[s - 1])
        f0 = feats[0]
        if d is None:
            assert f0 is not None
            d = f0
        elif f0 is not None:
            d = d + f0
        return upsample_to(self.head(d), out_size)
