"""What each part of a network computes, as plain op records (no torch).

These records are the single source of truth for cost accounting (``routespace.evaluators.cost``);
the builder constructs the same operators as torch modules, and tests check the two agree with
fvcore. Sizes are (H, W) of the network input; scale s runs at (H / 2**(s+2), W / 2**(s+2)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .errors import RoutespaceError
from .space import Edge, RoutingSpace, edge_kind


@dataclass(frozen=True)
class Conv:
    cin: int
    cout: int
    k: int
    h: int  # output height
    w: int  # output width
    stride: int = 1
    groups: int = 1
    bias: bool = False


@dataclass(frozen=True)
class BN:
    c: int
    h: int
    w: int


@dataclass(frozen=True)
class ReLU:
    c: int
    h: int
    w: int


@dataclass(frozen=True)
class Upsample:
    """Bilinear upsampling; sizes are the output's."""

    c: int
    h: int
    w: int


@dataclass(frozen=True)
class Pool:
    """Global average pooling; sizes are the input's."""

    c: int
    h: int
    w: int


Op = Union[Conv, BN, ReLU, Upsample, Pool]


def feature_size(size: tuple[int, int], scale: int) -> tuple[int, int]:
    f = 2 ** (scale + 2)
    return size[0] // f, size[1] // f


def res2net_width(channels: int) -> tuple[int, int]:
    """(hidden channels, width of each of the 4 splits) of a res2net cell on ``channels``."""
    hidden = channels // 2
    if hidden % 4:
        raise RoutespaceError(f"res2net cells need channels divisible by 8, got {channels}")
    return hidden, hidden // 4


def stem_ops(space: RoutingSpace, size: tuple[int, int]) -> list[Op]:
    c = space.base_channels
    h2, w2 = size[0] // 2, size[1] // 2
    h4, w4 = size[0] // 4, size[1] // 4
    return [
        Conv(3, c, 3, h2, w2, stride=2), BN(c, h2, w2), ReLU(c, h2, w2),
        Conv(c, c, 3, h2, w2, groups=c), Conv(c, c, 1, h2, w2), BN(c, h2, w2), ReLU(c, h2, w2),
        Conv(c, c, 3, h4, w4, stride=2, groups=c), Conv(c, c, 1, h4, w4), BN(c, h4, w4), ReLU(c, h4, w4),
    ]


def cell_ops(cell: str, channels: int, h: int, w: int) -> list[Op]:
    c = channels
    if cell == "sepconv":
        one = [ReLU(c, h, w), Conv(c, c, 3, h, w, groups=c), Conv(c, c, 1, h, w), BN(c, h, w)]
        return one + one
    if cell == "basic":
        return [Conv(c, c, 3, h, w), BN(c, h, w), ReLU(c, h, w), Conv(c, c, 3, h, w), BN(c, h, w)]
    if cell == "res2net":
        hidden, width = res2net_width(c)
        ops: list[Op] = [Conv(c, hidden, 1, h, w), BN(hidden, h, w), ReLU(hidden, h, w)]
        for _ in range(3):  # the first of the 4 splits passes through unchanged
            ops += [Conv(width, width, 3, h, w), BN(width, h, w), ReLU(width, h, w)]
        return ops + [Conv(hidden, c, 1, h, w), BN(c, h, w)]
    raise RoutespaceError(f"unknown cell type {cell!r}")


def edge_ops(space: RoutingSpace, edge: Edge, size: tuple[int, int]) -> list[Op]:
    _, src, dst = edge
    kind = edge_kind(src, dst)
    if kind == "keep":
        return []
    cs, cd = space.channels(src), space.channels(dst)
    h, w = feature_size(size, src)
    if kind == "down":
        ho, wo = feature_size(size, dst)
        return [ReLU(cs, h, w), Conv(cs, cd, 1, ho, wo, stride=2), BN(cd, ho, wo)]
    ho, wo = feature_size(size, dst)
    return [ReLU(cs, h, w), Conv(cs, cd, 1, h, w), BN(cd, h, w), Upsample(cd, ho, wo)]


def gate_ops(channels: int, outputs: int, h: int, w: int) -> list[Op]:
    """The soft gate of DESIGN §5: conv1x1 C -> C/2, BN, ReLU, global pool, conv1x1 -> k (with bias)."""
    half = channels // 2
    return [
        Conv(channels, half, 1, h, w), BN(half, h, w), ReLU(half, h, w),
        Pool(half, h, w), Conv(half, outputs, 1, 1, 1, bias=True),
    ]


def decoder_ops(space: RoutingSpace, output_scales: list[int], size: tuple[int, int]) -> list[Op]:
    """Top-down decoder from the coarsest active last-layer scale to stride 4, then the class head."""
    ops: list[Op] = []
    for s in range(max(output_scales), 0, -1):
        h, w = feature_size(size, s)
        ho, wo = feature_size(size, s - 1)
        c, co = space.channels(s), space.channels(s - 1)
        ops += [Conv(c, co, 1, h, w), BN(co, h, w), ReLU(co, h, w), Upsample(co, ho, wo)]
    h, w = feature_size(size, 0)
    ops += [Conv(space.base_channels, space.num_classes, 3, h, w, bias=True)]
    ops += [Upsample(space.num_classes, size[0], size[1])]
    return ops


def gate_outputs(space: RoutingSpace, node: tuple[int, int]) -> int:
    """Number of gate outputs of a node: its outgoing edges, or 1 (the decoder) in the last layer."""
    return len(space.out_edges(node)) or 1
