"""The torch operators of the space: stem, the cell types, edges and decoder (DESIGN §2).

They mirror ``routespace.spaces.layout`` op for op (the cost model); tests check the two against fvcore.
Every module is created through ``make_cell`` / ``Transition`` / ``Decoder``, used by the one builder
(static nets) and the supernet alike. Initialisation follows the released code: Kaiming normal fan-in
for every conv (``kaiming_init``).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from .celltypes import cell_type, res2net_width
from .space import RoutingSpace, edge_kind


def upsample_to(x: torch.Tensor, size: tuple[int, int] | list[int] | torch.Size) -> torch.Tensor:
    """Bilinear resampling to an exact target size (safe for sizes that are not powers of two).

    While tracing or exporting (torch.export), the size stays a traced/symbolic value, so exported graphs
    follow the input size."""
    if not (torch.jit.is_tracing() or torch.compiler.is_exporting()):
        size = (int(size[0]), int(size[1]))
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def kaiming_init(module: nn.Module) -> nn.Module:
    """Kaiming normal (fan-in, ReLU gain) for every conv, zero conv biases, BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def sep_conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
    ]


def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Stem(nn.Module):
    """conv3x3/2 3->C, sep-conv C->C, sep-conv/2 C->C, each followed by BN and ReLU (stride 4 out)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.body = kaiming_init(nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            *sep_conv(c, c), nn.BatchNorm2d(c), nn.ReLU(),
            *sep_conv(c, c, stride=2), nn.BatchNorm2d(c), nn.ReLU(),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SepConvCell(nn.Module):
    """The released ``sep_conv_3x3``: dw3x3, pw1x1, BN, ReLU, dw3x3, pw1x1, BN (the node adds the input)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.body = nn.Sequential(*sep_conv(c, c), nn.BatchNorm2d(c), nn.ReLU(), *sep_conv(c, c), nn.BatchNorm2d(c))

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


class Res2NetCell(nn.Module):
    """Res2Net-style cell: 1x1 reduce to C/2, split into 4 groups, hierarchical 3x3 convs on groups 2-4
    (each also receiving the previous group's output), concat, 1x1 expand to C, BN."""

    def __init__(self, channels: int):
        super().__init__()
        hidden, width = res2net_width(channels)
        self.width = width
        self.reduce = conv_bn_relu(channels, hidden, 1)
        self.convs = nn.ModuleList(conv_bn_relu(width, width, 3) for _ in range(3))
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


def make_cell(cell: str, channels: int) -> nn.Module | None:
    """The torch module of a registered cell type (``routespace.spaces.celltypes``); None for a cell that
    runs nothing (``identity``)."""
    ct = cell_type(cell)
    if ct.runs_nothing:
        return None
    module_name, cls_name = ct.module.split(":")
    return kaiming_init(getattr(importlib.import_module(module_name), cls_name)(channels))


class Transition(nn.Module):
    """An edge between adjacent layers: keep = ReLU (nothing from a pass-through source); down = ReLU,
    conv1x1/2, BN, ReLU; up = ReLU, conv1x1, BN, ReLU at the coarse resolution, then bilinear x2."""

    def __init__(self, space: RoutingSpace, src: int, dst: int, passthrough: bool = False):
        super().__init__()
        self.kind = edge_kind(src, dst)
        cs, cd = space.channels(src), space.channels(dst)
        if self.kind == "keep":
            self.body = nn.Identity() if passthrough else nn.ReLU()
        else:
            stride = 2 if self.kind == "down" else 1
            self.body = kaiming_init(nn.Sequential(nn.ReLU(), *conv_bn_relu(cs, cd, 1, stride)))

    def forward(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        y = self.body(x)
        if self.kind == "up":
            y = upsample_to(y, out_size)
        return y


class Decoder(nn.Module):
    """Top-down from the coarsest active scale to stride 4: conv1x1 C_s -> C_{s-1}, BN, ReLU, bilinear x2,
    add the next finer last-layer feature; at stride 4 conv1x1 C -> C, BN, ReLU and conv3x3 -> classes;
    bilinear to the input size. A missing scale adds nothing (it is skipped, not pushed through as zeros)."""

    def __init__(self, space: RoutingSpace, top_scale: int):
        super().__init__()
        self.top_scale = top_scale
        c = space.base_channels
        # lateral[s]: the conv at scale s (s = 0: C -> C; s > 0: C_s -> C_{s-1})
        self.lateral = kaiming_init(nn.ModuleList(
            [conv_bn_relu(c, c, 1)] + [conv_bn_relu(space.channels(s), space.channels(s - 1), 1) for s in range(1, top_scale + 1)]
        ))
        self.head = kaiming_init(nn.Conv2d(c, space.num_classes, 3, padding=1, bias=True))

    def forward(
        self, feats: list[torch.Tensor | None], sizes: list[tuple[int, int]], out_size: tuple[int, int],
        present: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """``feats[s]``: the last-layer feature at scale s or None; ``sizes[s]`` its spatial size.

        ``present`` (dynamic nets, dense mode): per scale an (N,) bool mask of the images for which that
        feature exists; an image's decoder then starts at its own coarsest present scale, exactly as
        if each image were decoded alone with its missing scales skipped."""
        d: torch.Tensor | None = None
        has: torch.Tensor | None = None  # images for which d holds something (present mode)
        for s in range(self.top_scale, -1, -1):
            f = feats[s]
            if f is not None:
                d = f if d is None else d + f
            if present is not None and present[s] is not None:
                has = present[s] if has is None else has | present[s]
            if d is None:
                continue
            if has is None or bool(has.all()):
                d = self.lateral[s](d)
            else:  # only the images that have a feature here or above (BN statistics see only them)
                rows = has.nonzero().flatten()
                sub = self.lateral[s](d.index_select(0, rows))
                d = sub.new_zeros(d.shape[0], *sub.shape[1:]).index_copy(0, rows, sub)
            if s > 0:
                d = upsample_to(d, sizes[s - 1])
        assert d is not None, "the decoder needs at least one last-layer feature"
        return upsample_to(self.head(d), out_size)
