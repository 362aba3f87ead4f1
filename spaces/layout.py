"""What each part of a network computes, as op records (no torch): stem, cells, edges, gates, decoder.

These records are the single source of truth for cost accounting (``routespace.evaluators.cost``) and
the memory estimate; the builder and the supernet construct the same operators as torch modules, and
tests check the two agree with fvcore. Sizes are (H, W) of the network input; scale s runs at
(H / 2**(s+2), W / 2**(s+2)). The operators are those of the released code of Li et al. (DESIGN §2):
keep = ReLU, down = ReLU, conv1x1/2, BN, ReLU; up = ReLU, conv1x1, BN, ReLU at the coarse resolution,
then bilinear x2; a node whose cell is ``identity`` forwards its input, so its keep edge runs nothing.
"""
from __future__ import annotations

from .celltypes import cell_type, res2net_width
from .errors import RoutespaceError
from .ops import BN, Conv, Op, Pool, ReLU, Upsample, feature_size, sep_ops
from .space import Edge, RoutingSpace, edge_kind

__all__ = [
    "BN", "Conv", "GATE_RESOLUTIONS", "Op", "Pool", "ReLU", "Upsample", "cell_ops", "decoder_ops", "edge_ops",
    "feature_size", "gate_input_size", "gate_ops", "gate_outputs", "out_ops", "res2net_width", "stem_ops",
]

# Resolution the soft gate reads its input at: 'full', or 'quarter' (bilinear x0.25 first, the "small gate"
# of the released Dynamic-A/B/C configs).
GATE_RESOLUTIONS = ("full", "quarter")


def stem_ops(space: RoutingSpace, size: tuple[int, int]) -> list[Op]:
    """conv3x3/2 3->C, BN, ReLU; dw3x3 + pw1x1 C->C, BN, ReLU; dw3x3/2 + pw1x1 C->C, BN, ReLU (stride 4)."""
    c = space.base_channels
    h2, w2 = size[0] // 2, size[1] // 2
    h4, w4 = size[0] // 4, size[1] // 4
    return [
        Conv(3, c, 3, h2, w2, stride=2), BN(c, h2, w2), ReLU(c, h2, w2),
        *sep_ops(c, c, h2, w2), BN(c, h2, w2), ReLU(c, h2, w2),
        *sep_ops(c, c, h4, w4, stride=2), BN(c, h4, w4), ReLU(c, h4, w4),
    ]


def cell_ops(cell: str, channels: int, h: int, w: int) -> list[Op]:
    """The ops of a cell's branch (the node's residual addition is not an op)."""
    return cell_type(cell).ops(channels, h, w)


def edge_ops(space: RoutingSpace, edge: Edge, size: tuple[int, int], passthrough: bool = False) -> list[Op]:
    """The ops of an edge; ``passthrough``: its source node runs no cell (an ``identity`` node), so a
    keep edge forwards the input unchanged (as a closed node of the dynamic net does)."""
    _, src, dst = edge
    kind = edge_kind(src, dst)
    cs, cd = space.channels(src), space.channels(dst)
    h, w = feature_size(size, src)
    ho, wo = feature_size(size, dst)
    if kind == "keep":
        return [] if passthrough else [ReLU(cs, h, w)]
    if kind == "down":
        return [ReLU(cs, h, w), Conv(cs, cd, 1, ho, wo, stride=2), BN(cd, ho, wo), ReLU(cd, ho, wo)]
    return [ReLU(cs, h, w), Conv(cs, cd, 1, h, w), BN(cd, h, w), ReLU(cd, h, w), Upsample(cd, ho, wo)]


def out_ops(space: RoutingSpace, scale: int, size: tuple[int, int], passthrough: bool = False) -> list[Op]:
    """The edge from a last-layer node to the decoder: a keep edge (ReLU), nothing from an identity node."""
    h, w = feature_size(size, scale)
    return [] if passthrough else [ReLU(space.channels(scale), h, w)]


def gate_input_size(h: int, w: int, resolution: str = "full") -> tuple[int, int]:
    """Spatial size the gate head runs at: the node's, or a quarter of it (at least 1x1)."""
    if resolution == "full":
        return h, w
    if resolution == "quarter":
        return max(1, h // 4), max(1, w // 4)
    raise RoutespaceError(f"unknown gate resolution {resolution!r}: choose one of {', '.join(GATE_RESOLUTIONS)}")


def gate_ops(channels: int, outputs: int, h: int, w: int, resolution: str = "full") -> list[Op]:
    """The soft gate of DESIGN §5: [bilinear x0.25,] conv1x1 C -> C/2, BN, ReLU, global pool, conv1x1 -> k
    (with bias)."""
    half = channels // 2
    hg, wg = gate_input_size(h, w, resolution)
    resize: list[Op] = [Upsample(channels, hg, wg)] if resolution != "full" else []
    return [
        *resize, Conv(channels, half, 1, hg, wg), BN(half, hg, wg), ReLU(half, hg, wg),
        Pool(half, hg, wg), Conv(half, outputs, 1, 1, 1, bias=True),
    ]


def decoder_ops(space: RoutingSpace, output_scales: list[int], size: tuple[int, int]) -> list[Op]:
    """Top-down decoder from the coarsest active last-layer scale: conv1x1 C_s -> C_{s-1}, BN, ReLU,
    bilinear x2 per scale; at stride 4 conv1x1 C -> C, BN, ReLU, then conv3x3 -> classes (with bias) and
    bilinear to the input size. A missing finer scale adds nothing; its conv still carries the coarser sum."""
    ops: list[Op] = []
    for s in range(max(output_scales), 0, -1):
        h, w = feature_size(size, s)
        ho, wo = feature_size(size, s - 1)
        c, co = space.channels(s), space.channels(s - 1)
        ops += [Conv(c, co, 1, h, w), BN(co, h, w), ReLU(co, h, w), Upsample(co, ho, wo)]
    h, w = feature_size(size, 0)
    c = space.base_channels
    ops += [Conv(c, c, 1, h, w), BN(c, h, w), ReLU(c, h, w)]
    ops += [Conv(c, space.num_classes, 3, h, w, bias=True)]
    ops += [Upsample(space.num_classes, size[0], size[1])]
    return ops


def gate_outputs(space: RoutingSpace, node: tuple[int, int]) -> int:
    """Number of gate outputs of a node: its outgoing edges, or 1 (the decoder) in the last layer."""
    return len(space.out_edges(node)) or 1
