"""Analytic cost: FLOPs and parameters from the space and the architecture, without building a model.

Conventions (a multiply-add is one FLOP in both):

- ``paper`` (Li et al. 2020): every conv (grouped/depthwise counted correctly), BN 2 FLOPs per output
  element, ReLU 1 per element; bilinear upsampling, additions and global pooling are not counted.
- ``fvcore``: what ``fvcore.nn.FlopCountAnalysis`` counts on the built module in eval mode: convs
  the same, BN 2 per element (affine, inference), ReLU 0, bilinear upsampling 4 per output element,
  global average pooling 1 per input element; additions are not counted.

Not counted in either: conv biases, the residual and edge additions, the per-edge gate multiplies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

from ..spaces.architecture import Architecture
from ..spaces.errors import RoutespaceError
from ..spaces.layout import (
    BN, Conv, Op, Pool, ReLU, Upsample, cell_ops, decoder_ops, edge_ops, feature_size, gate_ops,
    gate_outputs, stem_ops,
)
from ..spaces.space import Edge, Node, RoutingSpace, check_input_size

CONVENTIONS = ("paper", "fvcore")


def op_flops(op: Op, convention: str = "paper") -> int:
    """FLOPs of one op under a convention (pure)."""
    if isinstance(op, Conv):
        return op.h * op.w * op.cout * (op.cin // op.groups) * op.k * op.k
    if isinstance(op, BN):
        return 2 * op.c * op.h * op.w
    if isinstance(op, ReLU):
        return op.c * op.h * op.w if convention == "paper" else 0
    if isinstance(op, Upsample):
        return 0 if convention == "paper" else 4 * op.c * op.h * op.w
    if isinstance(op, Pool):
        return 0 if convention == "paper" else op.c * op.h * op.w
    raise TypeError(f"unknown op {op!r}")


def op_params(op: Op) -> int:
    if isinstance(op, Conv):
        return op.cout * (op.cin // op.groups) * op.k * op.k + (op.cout if op.bias else 0)
    if isinstance(op, BN):
        return 2 * op.c
    return 0


def ops_flops(ops: Iterable[Op], convention: str = "paper") -> int:
    return sum(op_flops(op, convention) for op in ops)


def ops_params(ops: Iterable[Op]) -> int:
    return sum(op_params(op) for op in ops)


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise RoutespaceError(f"unknown FLOPs convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")


# --- cached per-part costs (space, size and convention are hashable) ---------------------------------
@lru_cache(maxsize=4096)
def cell_cost(space: RoutingSpace, node: Node, cell: str, size: tuple[int, int], convention: str) -> tuple[int, int]:
    """(FLOPs, params) of the cell at ``node``."""
    h, w = feature_size(size, node[1])
    ops = cell_ops(cell, space.channels(node[1]), h, w)
    return ops_flops(ops, convention), ops_params(ops)


@lru_cache(maxsize=8192)
def edge_cost(space: RoutingSpace, edge: Edge, size: tuple[int, int], convention: str) -> tuple[int, int]:
    ops = edge_ops(space, edge, size)
    return ops_flops(ops, convention), ops_params(ops)


@lru_cache(maxsize=4096)
def gate_cost(space: RoutingSpace, node: Node, size: tuple[int, int], convention: str) -> tuple[int, int]:
    h, w = feature_size(size, node[1])
    ops = gate_ops(space.channels(node[1]), gate_outputs(space, node), h, w)
    return ops_flops(ops, convention), ops_params(ops)


@lru_cache(maxsize=256)
def stem_cost(space: RoutingSpace, size: tuple[int, int], convention: str) -> tuple[int, int]:
    ops = stem_ops(space, size)
    return ops_flops(ops, convention), ops_params(ops)


@lru_cache(maxsize=1024)
def decoder_cost(space: RoutingSpace, top_scale: int, size: tuple[int, int], convention: str) -> tuple[int, int]:
    ops = decoder_ops(space, [top_scale], size)
    return ops_flops(ops, convention), ops_params(ops)


# --- reports -----------------------------------------------------------------------------------------
@dataclass
class NodeCost:
    """Cost of one node: its cell, its outgoing edges (paid by the source), and its gate if any."""

    node: Node
    cell: str
    cell_flops: int = 0
    edge_flops: dict[Edge, int] = field(default_factory=dict)
    gate_flops: int = 0
    params: int = 0

    @property
    def flops(self) -> int:
        return self.cell_flops + sum(self.edge_flops.values()) + self.gate_flops

    def to_dict(self) -> dict:
        return {
            "layer": self.node[0],
            "scale": self.node[1],
            "cell": self.cell,
            "cell_gflops": self.cell_flops / 1e9,
            "edges_gflops": sum(self.edge_flops.values()) / 1e9,
            "edges": [
                {"to": [l, d], "gflops": f / 1e9} for (l, s, d), f in sorted(self.edge_flops.items())
            ],
            "gate_gflops": self.gate_flops / 1e9,
            "gflops": self.flops / 1e9,
            "params": self.params,
        }


@dataclass
class CostReport:
    """FLOPs and params of a network, with a per-node breakdown; ``body`` = cells + edges (what routing
    can switch off), excluding stem, decoder and gate heads."""

    name: str
    size: tuple[int, int]
    convention: str
    stem_flops: int
    decoder_flops: int
    nodes: list[NodeCost]
    params: int

    @property
    def body_flops(self) -> int:
        return sum(n.cell_flops + sum(n.edge_flops.values()) for n in self.nodes)

    @property
    def gate_flops(self) -> int:
        return sum(n.gate_flops for n in self.nodes)

    @property
    def flops(self) -> int:
        return self.stem_flops + self.decoder_flops + self.body_flops + self.gate_flops

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": list(self.size),
            "convention": self.convention,
            "gflops": self.gflops,
            "params_m": self.params_m,
            "params": self.params,
            "body_gflops": self.body_flops / 1e9,
            "stem_gflops": self.stem_flops / 1e9,
            "decoder_gflops": self.decoder_flops / 1e9,
            "gates_gflops": self.gate_flops / 1e9,
            "nodes": [n.to_dict() for n in self.nodes],
        }


def _size(space: RoutingSpace, size: tuple[int, int] | None) -> tuple[int, int]:
    return space.input_size if size is None else check_input_size(tuple(size))


def architecture_cost(
    arch: Architecture,
    size: tuple[int, int] | None = None,
    convention: str = "paper",
    gates: bool = False,
) -> CostReport:
    """Exact cost of a static architecture at ``size`` (default: the space's input size).

    With ``gates=True`` the gate head of every active node is added (as in a dynamic net with these
    paths open)."""
    _check_convention(convention)
    space = arch.space
    size = _size(space, size)
    stem_f, stem_p = stem_cost(space, size, convention)
    dec_f, dec_p = decoder_cost(space, max(arch.output_scales()), size, convention)
    params = stem_p + dec_p
    nodes = []
    for node in arch.nodes:
        cell = "stem" if node[0] == 0 else arch.cell_of(node)
        nc = NodeCost(node, cell)
        if node[0] > 0:
            nc.cell_flops, p = cell_cost(space, node, cell, size, convention)
            nc.params += p
        for e in arch.out_edges(node):
            f, p = edge_cost(space, e, size, convention)
            nc.edge_flops[e] = f
            nc.params += p
        if gates:
            nc.gate_flops, p = gate_cost(space, node, size, convention)
            nc.params += p
        params += nc.params
        nodes.append(nc)
    return CostReport(arch.name or "architecture", size, convention, stem_f, dec_f, nodes, params)


def space_cost(
    space: RoutingSpace,
    size: tuple[int, int] | None = None,
    convention: str = "paper",
    gates: bool = True,
) -> CostReport:
    """Cost of the whole space with every edge open (the dynamic supernet's upper bound), with or
    without the gate heads."""
    report = architecture_cost(Architecture.all_open(space), size, convention, gates)
    report.name = "all-open" + (" + gates" if gates else " (no gates)")
    return report


def gflops(arch: Architecture, size: tuple[int, int] | None = None, convention: str = "paper") -> float:
    """Total GFLOPs of a static architecture (the fast path used by searches)."""
    return architecture_cost(arch, size, convention).gflops
