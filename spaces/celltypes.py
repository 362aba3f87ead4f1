"""The cell registry: every cell type in one table, with its op records, its torch module and its
drawing style. Adding a cell type is one entry here (plus its module in ``routespace.spaces.cells``);
the space's validation, the cost model, the builder, the supernet, the search encodings, the plots and
the CLI all read their choices from this table. Torch-free: the module is named, imported when built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import RoutespaceError
from .ops import BN, Conv, Op, ReLU, sep_ops


def res2net_width(channels: int) -> tuple[int, int]:
    """(hidden channels, width of each of the 4 splits) of a res2net cell on ``channels``."""
    hidden = channels // 2
    if hidden % 4:
        raise RoutespaceError(f"res2net cells need channels divisible by 8, got {channels}")
    return hidden, hidden // 4


def _sepconv_ops(c: int, h: int, w: int) -> list[Op]:
    # the released sep_conv_3x3: dw, pw, BN, ReLU, dw, pw, BN (no leading ReLU)
    return [*sep_ops(c, c, h, w), BN(c, h, w), ReLU(c, h, w), *sep_ops(c, c, h, w), BN(c, h, w)]


def _basic_ops(c: int, h: int, w: int) -> list[Op]:
    return [Conv(c, c, 3, h, w), BN(c, h, w), ReLU(c, h, w), Conv(c, c, 3, h, w), BN(c, h, w)]


def _res2net_ops(c: int, h: int, w: int) -> list[Op]:
    hidden, width = res2net_width(c)
    ops: list[Op] = [Conv(c, hidden, 1, h, w), BN(hidden, h, w), ReLU(hidden, h, w)]
    for _ in range(3):  # the first of the 4 splits passes through unchanged
        ops += [Conv(width, width, 3, h, w), BN(width, h, w), ReLU(width, h, w)]
    return ops + [Conv(hidden, c, 1, h, w), BN(c, h, w)]


@dataclass(frozen=True)
class CellType:
    """One cell type. ``ops(channels, h, w)`` lists what its branch computes (the node adds the input:
    ``h = x + cell(x)``); ``module`` is 'module:Class' of its torch implementation, '' for a cell that
    runs nothing (``identity``: the node forwards x, and its keep edge carries x unchanged)."""

    name: str
    ops: Callable[[int, int, int], list[Op]]
    module: str
    marker: str  # matplotlib marker of the node in grid plots
    color: str  # face colour of that marker
    description: str

    @property
    def runs_nothing(self) -> bool:
        return not self.module


CELLS: dict[str, CellType] = {
    c.name: c
    for c in (
        CellType("sepconv", _sepconv_ops, "routespace.spaces.cells:SepConvCell", "o", "#9AD0A4",
                 "separable conv cell of Li et al.: dw3x3, pw1x1, BN, ReLU, dw3x3, pw1x1, BN"),
        CellType("res2net", _res2net_ops, "routespace.spaces.cells:Res2NetCell", "s", "#C9A3E0",
                 "Res2Net cell: 1x1 reduce, 3 hierarchical 3x3 groups, 1x1 expand, BN"),
        CellType("basic", _basic_ops, "routespace.spaces.cells:BasicCell", "D", "#F2D16B",
                 "HRNet basic block: conv3x3, BN, ReLU, conv3x3, BN"),
        CellType("identity", lambda c, h, w: [], "", "X", "#FFFFFF",
                 "no cell: the node forwards its summed input (a closed node of the dynamic net)"),
    )
}
CELL_TYPES: tuple[str, ...] = tuple(CELLS)


def cell_type(name: str) -> CellType:
    try:
        return CELLS[name]
    except KeyError:
        raise RoutespaceError(f"unknown cell type {name!r}: choose one of {', '.join(CELL_TYPES)}") from None
