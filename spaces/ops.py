"""Op records: what a network part computes, as plain frozen values (no torch).

The cost model (``routespace.evaluators.cost``) and the memory estimate read these records; the torch
modules in ``routespace.spaces.cells`` build the same operators, and tests check the two against fvcore.
Sizes are output sizes unless a record says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


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
    """Bilinear resampling (up, or down for the small gate); sizes are the output's."""

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
    """(H, W) of the feature map at ``scale`` (stride 4 * 2**scale) for an input of ``size``."""
    f = 2 ** (scale + 2)
    return size[0] // f, size[1] // f


def feature_sizes(h: int, w: int, scales: int = 4) -> list[tuple[int, int]]:
    """[(H, W)] of the feature maps at scales 0..``scales``-1 for an H x W input: what the networks' forward
    passes resize to. Plain integer arithmetic, so it traces (TorchScript, torch.export) on the input's sizes."""
    return [feature_size((h, w), s) for s in range(scales)]


def sep_ops(cin: int, cout: int, h: int, w: int, stride: int = 1) -> list[Op]:
    """Depthwise 3x3 (stride ``stride``) then pointwise 1x1; ``h, w`` are the output size."""
    return [Conv(cin, cin, 3, h, w, stride=stride, groups=cin), Conv(cin, cout, 1, h, w)]
