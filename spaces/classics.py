"""The classic segmentation nets as exact subgraphs of a routing space.

Each function takes a :class:`RoutingSpace` and returns an :class:`Architecture`; the layout is a
function of the number of layers L. Scales are listed for layers 1..L (0 = stride 4, 3 = stride 32).
"""
from __future__ import annotations

from typing import Callable

from .architecture import Architecture
from .errors import RoutespaceError
from .space import Edge, RoutingSpace


def _stretch(pattern: list[int], layers: int) -> list[int]:
    """Resample a per-layer pattern to ``layers`` entries (nearest earlier index)."""
    return [pattern[(i * len(pattern)) // layers] for i in range(layers)]


def _need(space: RoutingSpace, minimum: int, name: str) -> None:
    if space.layers < minimum:
        raise RoutespaceError(f"{name} needs a space with at least {minimum} layers, this one has {space.layers}")


def fcn32s(space: RoutingSpace) -> Architecture:
    """FCN-32s: straight down one scale per layer to stride 32, then stay there: [1, 2, 3, 3, ..., 3]."""
    _need(space, 3, "fcn32s")
    scales = [min(l, 3) for l in range(1, space.layers + 1)]
    return Architecture.from_path(space, scales, name="fcn32s")


def deeplabv3(space: RoutingSpace) -> Architecture:
    """DeepLabV3 at output stride 16 (no ASPP): down to stride 16, then stay: [1, 2, 2, ..., 2]."""
    _need(space, 2, "deeplabv3")
    scales = [min(l, 2) for l in range(1, space.layers + 1)]
    return Architecture.from_path(space, scales, name="deeplabv3")


def unet(space: RoutingSpace) -> Architecture:
    """U-Net: an encoder of ceil(L/2) layers spread evenly over scales 0..3, the mirrored decoder
    back to stride 4, and same-scale skip chains: keep edges carrying each encoder scale forward
    from its last encoder layer to the layer where the decoder returns to it.

    For L=16 the path is [0,0,1,1,2,2,3,3,3,3,2,2,1,1,0,0]; the skip chains run at scale 0 from
    layer 2 to 15, at scale 1 from 4 to 13 and at scale 2 from 6 to 11.
    """
    _need(space, 8, "unet")
    enc_len = (space.layers + 1) // 2
    encoder = [(i * 4) // enc_len for i in range(enc_len)]
    decoder = list(reversed(encoder))[: space.layers - enc_len]
    scales = encoder + decoder
    path = Architecture.from_path(space, scales)
    edges: set[Edge] = set(path.edges)
    for s in range(3):
        enc_layers = [l for l in range(1, enc_len + 1) if scales[l - 1] == s]
        dec_layers = [l for l in range(enc_len + 1, space.layers + 1) if scales[l - 1] == s]
        if not enc_layers or not dec_layers:
            continue
        for layer in range(max(enc_layers) + 1, min(dec_layers) + 1):
            edges.add((layer, s, s))
    return Architecture(space, frozenset(edges), name="unet")


HRNET_BRANCHES_L16 = [1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4]


def hrnetv2(space: RoutingSpace) -> Architecture:
    """HRNetV2: parallel branches; the branch count per layer is [1,1,2,2,3,3,3,3,3,3,3,4,4,4,4,4] for
    L=16 (resampled for other L). Keep edges along every branch, a down edge from the next finer
    branch where a branch starts, and multi-resolution exchange (a down and an up edge between each
    pair of adjacent branches) at every second layer, as HRNet fuses at the end of each module.
    """
    _need(space, 4, "hrnetv2")
    counts = [min(c, l + 1, 4) for l, c in enumerate(_stretch(HRNET_BRANCHES_L16, space.layers), start=1)]
    prev = 1  # the stem is one branch
    edges: set[Edge] = set()
    for layer, count in enumerate(counts, start=1):
        for s in range(min(prev, count)):
            edges.add((layer, s, s))
        for s in range(prev, count):
            edges.add((layer, s - 1, s))  # a new branch starts from the next finer one
        if layer % 2 == 0:
            for s in range(min(prev, count) - 1):
                edges.add((layer, s, s + 1))
                edges.add((layer, s + 1, s))
        prev = count
    return Architecture(space, frozenset(edges), name="hrnetv2")


AUTODEEPLAB_L12 = [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]


def autodeeplab(space: RoutingSpace) -> Architecture:
    """Auto-DeepLab's published searched path for L=12, [0,0,0,1,2,1,2,2,3,3,2,1]; exact at L=12 and
    stretched (each layer repeated in order) for L > 12, e.g. L=16 gives
    [0,0,0,0,1,1,2,1,2,2,2,3,3,3,2,1]. For L < 12 it is resampled and each move clamped to one
    scale (L=8 gives [0,0,1,2,2,2,3,2]): an approximation, not the published net."""
    _need(space, 3, "autodeeplab")
    scales, prev = [], 0
    for layer, s in enumerate(_stretch(AUTODEEPLAB_L12, space.layers), start=1):
        prev = max(prev - 1, min(s, prev + 1, layer, 3))
        scales.append(prev)
    return Architecture.from_path(space, scales, name="autodeeplab")


CLASSICS: dict[str, Callable[[RoutingSpace], Architecture]] = {
    "fcn32s": fcn32s,
    "deeplabv3": deeplabv3,
    "unet": unet,
    "hrnetv2": hrnetv2,
    "autodeeplab": autodeeplab,
}


def classic(name: str, space: RoutingSpace) -> Architecture:
    """Look up a classic by name ('fcn32s', 'deeplabv3', 'unet', 'hrnetv2', 'autodeeplab'; case, '-'
    and '_' are ignored)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in CLASSICS:
        raise RoutespaceError(f"unknown classic {name!r}: choose one of {', '.join(CLASSICS)}")
    return CLASSICS[key](space)
