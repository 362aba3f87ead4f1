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
from typing import Callable, Iterable

from ..spaces.architecture import Architecture
from ..spaces.celltypes import cell_type
from ..spaces.errors import RoutespaceError
from ..spaces.layout import (
    BN, Conv, Op, Pool, ReLU, Upsample, cell_ops, decoder_ops, edge_ops, feature_size, gate_ops, gate_outputs,
    out_ops, stem_ops,
)
from ..spaces.space import Edge, Node, RoutingSpace, check_input_size


def _conv(op: Conv) -> int:
    return op.h * op.w * op.cout * (op.cin // op.groups) * op.k * op.k


def _per_element(factor: int) -> Callable[[Op], int]:
    return lambda op: factor * op.c * op.h * op.w


# A convention is a rule table: op record type -> FLOPs of one such op (fvcore's handle tables, in small).
# Adding a convention is one entry here; every cost function and the CLI's choices read this table.
CONVENTION_RULES: dict[str, dict[type, Callable[[Op], int]]] = {
    "paper": {Conv: _conv, BN: _per_element(2), ReLU: _per_element(1), Upsample: _per_element(0), Pool: _per_element(0)},
    "fvcore": {Conv: _conv, BN: _per_element(2), ReLU: _per_element(0), Upsample: _per_element(4), Pool: _per_element(1)},
}
CONVENTIONS = tuple(CONVENTION_RULES)


def op_flops(op: Op, convention: str = "paper") -> int:
    """FLOPs of one op under a convention (pure)."""
    rule = CONVENTION_RULES[convention].get(type(op))
    if rule is None:
        raise TypeError(f"unknown op {op!r}")
    return rule(op)


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
    if convention not in CONVENTION_RULES:
        raise RoutespaceError(f"unknown FLOPs convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")


# --- cached per-part costs (space, size and convention are hashable) ---------------------------------
def _cost(ops: list[Op], convention: str) -> tuple[int, int]:
    return ops_flops(ops, convention), ops_params(ops)


@lru_cache(maxsize=4096)
def cell_cost(space: RoutingSpace, node: Node, cell: str, size: tuple[int, int], convention: str) -> tuple[int, int]:
    """(FLOPs, params) of the cell at ``node``."""
    h, w = feature_size(size, node[1])
    return _cost(cell_ops(cell, space.channels(node[1]), h, w), convention)


@lru_cache(maxsize=8192)
def edge_cost(space: RoutingSpace, edge: Edge, size: tuple[int, int], convention: str,
              passthrough: bool = False) -> tuple[int, int]:
    """(FLOPs, params) of an edge; ``passthrough``: its source runs no cell (a keep edge then costs 0)."""
    return _cost(edge_ops(space, edge, size, passthrough), convention)


@lru_cache(maxsize=1024)
def out_cost(space: RoutingSpace, scale: int, size: tuple[int, int], convention: str,
             passthrough: bool = False) -> tuple[int, int]:
    """(FLOPs, params) of the edge from the last-layer node at ``scale`` to the decoder."""
    return _cost(out_ops(space, scale, size, passthrough), convention)


@lru_cache(maxsize=4096)
def gate_cost(space: RoutingSpace, node: Node, size: tuple[int, int], convention: str,
              resolution: str = "full") -> tuple[int, int]:
    h, w = feature_size(size, node[1])
    return _cost(gate_ops(space.channels(node[1]), gate_outputs(space, node), h, w, resolution), convention)


@lru_cache(maxsize=256)
def stem_cost(space: RoutingSpace, size: tuple[int, int], convention: str) -> tuple[int, int]:
    return _cost(stem_ops(space, size), convention)


@lru_cache(maxsize=1024)
def decoder_cost(space: RoutingSpace, top_scale: int, size: tuple[int, int], convention: str) -> tuple[int, int]:
    """(FLOPs, params) of the decoder starting at ``top_scale`` (the coarsest last-layer feature)."""
    return _cost(decoder_ops(space, [top_scale], size), convention)


# --- reports -----------------------------------------------------------------------------------------
@dataclass
class NodeCost:
    """Cost of one node: its cell, its outgoing edges (paid by the source; a last-layer node's edge to
    the decoder is ``out_flops``), and its gate if any."""

    node: Node
    cell: str
    cell_flops: int = 0
    edge_flops: dict[Edge, int] = field(default_factory=dict)
    out_flops: int = 0
    gate_flops: int = 0
    params: int = 0

    @property
    def body_flops(self) -> int:
        return self.cell_flops + sum(self.edge_flops.values()) + self.out_flops

    @property
    def flops(self) -> int:
        return self.body_flops + self.gate_flops

    def to_dict(self) -> dict:
        return {
            "layer": self.node[0],
            "scale": self.node[1],
            "cell": self.cell,
            "cell_gflops": self.cell_flops / 1e9,
            "edges_gflops": (sum(self.edge_flops.values()) + self.out_flops) / 1e9,
            "edges": [
                {"to": [l, d], "gflops": f / 1e9} for (l, s, d), f in sorted(self.edge_flops.items())
            ] + ([{"to": "decoder", "gflops": self.out_flops / 1e9}] if self.out_flops else []),
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
        return sum(n.body_flops for n in self.nodes)

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
    gate_resolution: str = "full",
) -> CostReport:
    """Exact cost of a static architecture at ``size`` (default: the space's input size).

    With ``gates=True`` the gate head of every active node is added (as in a dynamic net with these
    paths open), read at ``gate_resolution`` ('full' or 'quarter')."""
    _check_convention(convention)
    space = arch.space
    size = _size(space, size)
    stem_f, stem_p = stem_cost(space, size, convention)
    dec_f, dec_p = decoder_cost(space, max(arch.output_scales()), size, convention)
    params = stem_p + dec_p
    nodes = []
    for node in arch.nodes:
        cell = arch.cell_of(node)
        passthrough = cell_type(cell).runs_nothing
        nc = NodeCost(node, cell)
        nc.cell_flops, p = cell_cost(space, node, cell, size, convention)
        nc.params += p
        for e in arch.out_edges(node):
            f, p = edge_cost(space, e, size, convention, passthrough)
            nc.edge_flops[e] = f
            nc.params += p
        if node[0] == space.layers:
            nc.out_flops = out_cost(space, node[1], size, convention, passthrough)[0]
        if gates:
            nc.gate_flops, p = gate_cost(space, node, size, convention, gate_resolution)
            nc.params += p
        params += nc.params
        nodes.append(nc)
    return CostReport(arch.name or "architecture", size, convention, stem_f, dec_f, nodes, params)


def space_cost(
    space: RoutingSpace,
    size: tuple[int, int] | None = None,
    convention: str = "paper",
    gates: bool = True,
    gate_resolution: str = "full",
) -> CostReport:
    """Cost of the whole space with every edge open (the dynamic supernet's upper bound), with or
    without the gate heads."""
    report = architecture_cost(Architecture.all_open(space), size, convention, gates, gate_resolution)
    report.name = "all-open" + (f" + gates ({gate_resolution})" if gates else " (no gates)")
    return report


def gflops(arch: Architecture, size: tuple[int, int] | None = None, convention: str = "paper") -> float:
    """Total GFLOPs of a static architecture (the fast path used by searches)."""
    return architecture_cost(arch, size, convention).gflops


def released_code_flops(report: CostReport) -> int:
    """The same network's FLOPs as the released DynamicRouting code counts them: it runs, but leaves out of
    its count, the initial node's cell and gate head (``cal_flops=False`` on its init layer) and the ReLUs
    of the last layer's edges to the decoder. For comparing with the paper's figures only."""
    first = next((n for n in report.nodes if n.node == (0, 0)), None)
    skipped = (first.cell_flops + first.gate_flops if first else 0) + sum(n.out_flops for n in report.nodes)
    return report.flops - skipped
