"""Search-space encodings: how a flat dict of categorical parameters maps to an :class:`Architecture`.

Two encodings, both with the same parameter names for every trial (what Optuna and NNI need):

- ``path``: one move per layer, ``move_<l>`` in (-1, 0, +1) for l = 1..L. The scale at layer l is
  ``clamp(scale[l-1] + move_l, 0, min(l, 3))`` starting from the stem's scale 0; a move that would
  leave the space is clamped (this is the path encoding's repair, so every vector decodes).
- ``subgraph``: one on/off switch per edge of the space, ``edge_<l>_<src>_<dst>`` in (0, 1) (the
  edge from (layer l-1, scale src) to (layer l, scale dst)). The switched-on edges are repaired to a
  valid Architecture by :func:`repair_edges`.

Optionally each node gets a cell choice, ``cell_<l>_<s>`` over the given cell types, for every node of
the space (layers 1..L); only the choices of active nodes are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..spaces.architecture import Architecture
from ..spaces.errors import RoutespaceError
from ..spaces.paths import best_path, prune_edges
from ..spaces.space import CELL_TYPES, Edge, Node, RoutingSpace

ENCODINGS = ("path", "subgraph")
MOVES = (-1, 0, 1)
SWITCH = (0, 1)


def edge_param(edge: Edge) -> str:
    layer, src, dst = edge
    return f"edge_{layer}_{src}_{dst}"


def move_param(layer: int) -> str:
    return f"move_{layer}"


def cell_param(node: Node) -> str:
    return f"cell_{node[0]}_{node[1]}"


# --- the subgraph repair (pure functions over the space graph) -----------------------------------
# The largest valid subgraph inside a set of edges (pure; see ``spaces.paths.prune_edges``).
on_stem_to_decoder_paths = prune_edges


def completion_path(space: RoutingSpace, edges: Iterable[Edge]) -> list[Edge]:
    """A stem-to-last-layer path that adds as few edges outside ``edges`` as possible.

    Dynamic programming over layers: an edge already in ``edges`` costs 0, any other edge of the space
    costs 1. Ties are broken deterministically: fewer added edges, then an edge already chosen, then a
    keep edge, then the smaller source scale; at the last layer the smallest scale wins.
    """
    chosen = set(edges)

    def gain(e: Edge) -> tuple:
        return (e not in chosen, e not in chosen, e[1] != e[2], e[1])

    def combine(value: tuple, g: tuple) -> tuple:  # total added, then this step's tie-breaks
        return (value[0] + g[0], *g[1:])

    _, path = best_path(space, gain, combine, (0, False, False, 0), key=lambda v: tuple(-x for x in v),
                        finish=lambda node, v: (v[0], False, False, 0))
    return path


def repair_edges(space: RoutingSpace, edges: Iterable[Edge]) -> frozenset[Edge]:
    """Repair any set of switched-on edges to the edge set of a valid Architecture (deterministic).

    1. Drop edges that are not in the space.
    2. Keep the edges that lie on a stem-to-decoder path (:func:`on_stem_to_decoder_paths`); dangling
       edges (unreachable from the stem, or not reaching the last layer) are dropped.
    3. If nothing is left, add the :func:`completion_path` (the path adding fewest new edges) to the
       switched-on edges and apply step 2 again, so chosen edges that the path connects are kept.

    Pure: the result depends only on the space and the set of edges (not on their order).
    """
    chosen = frozenset(e for e in edges if space.has_edge(e))
    kept = on_stem_to_decoder_paths(space, chosen)
    if kept:
        return kept
    return on_stem_to_decoder_paths(space, chosen | frozenset(completion_path(space, chosen)))


# --- encodings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoding:
    """A fixed set of categorical parameters over a space, and the decoding to an Architecture.

    ``cells``: cell types offered per node (empty = every node uses the space's cell).
    """

    space: RoutingSpace
    kind: str = "path"
    cells: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise RoutespaceError(f"unknown space encoding {self.kind!r}: choose one of {', '.join(ENCODINGS)}")
        cells = tuple(dict.fromkeys(self.cells))
        for c in cells:
            if c not in CELL_TYPES:
                raise RoutespaceError(f"unknown cell type {c!r} for the cell choice: choose from {', '.join(CELL_TYPES)}")
        if len(cells) == 1 and cells[0] == self.space.cell:
            cells = ()
        object.__setattr__(self, "cells", cells)

    @property
    def cell_choices(self) -> tuple[str, ...]:
        return self.cells or (self.space.cell,)

    def choices(self) -> dict[str, tuple]:
        """Parameter name -> its choices, in a fixed order."""
        out: dict[str, tuple] = {}
        if self.kind == "path":
            for layer in range(1, self.space.layers + 1):
                out[move_param(layer)] = MOVES
        else:
            for e in self.space.edges():
                out[edge_param(e)] = SWITCH
        if self.cells:
            for node in self.space.nodes():
                if node[0] > 0:
                    out[cell_param(node)] = self.cells
        return out

    def decode(self, params: Mapping[str, Any]) -> Architecture:
        """The Architecture of a full parameter dict (missing or unknown values are an error)."""
        space = self.space
        try:
            if self.kind == "path":
                scales, prev = [], 0
                for layer in range(1, space.layers + 1):
                    move = int(params[move_param(layer)])
                    if move not in MOVES:
                        raise RoutespaceError(f"{move_param(layer)} must be -1, 0 or 1, got {move}")
                    prev = max(0, min(prev + move, layer, space.scales - 1))
                    scales.append(prev)
                edges = Architecture.from_path(space, scales).edges
            else:
                edges = repair_edges(space, [e for e in space.edges() if int(params[edge_param(e)])])
            cells: dict[Node, str] = {}
            if self.cells:
                active = {(e[0], e[2]) for e in edges}
                for node in active:
                    cell = params[cell_param(node)]
                    if cell not in self.cells:
                        raise RoutespaceError(f"{cell_param(node)} must be one of {', '.join(self.cells)}, got {cell!r}")
                    cells[node] = cell
        except KeyError as exc:
            raise RoutespaceError(f"parameter {exc.args[0]} is missing for the {self.kind} encoding") from None
        return Architecture(space, edges, tuple(cells.items()))

    def encode(self, arch: Architecture) -> dict[str, Any]:
        """A parameter dict that decodes to ``arch`` (``path``: only single paths can be encoded)."""
        if arch.space != self.space:
            raise RoutespaceError("the architecture belongs to another space than this encoding")
        params: dict[str, Any] = {}
        if self.kind == "path":
            scales = {}
            for layer, src, dst in arch.edges:
                if layer in scales:
                    raise RoutespaceError("the path encoding holds single paths only; this architecture branches")
                scales[layer] = (src, dst)
            for layer in range(1, self.space.layers + 1):
                src, dst = scales[layer]
                params[move_param(layer)] = dst - src
        else:
            for e in self.space.edges():
                params[edge_param(e)] = int(e in arch.edges)
        if self.cells:
            for node in self.space.nodes():
                if node[0] > 0:
                    cell = arch.cell_of(node) if node in arch.nodes else self.cells[0]
                    if cell not in self.cells:
                        raise RoutespaceError(f"{cell} at node {node} is not among the offered cells {self.cells}")
                    params[cell_param(node)] = cell
        return params

    def suggest(self, trial) -> Architecture:
        """Draw every parameter from an Optuna trial (categoricals, same names for every trial)."""
        params = {name: trial.suggest_categorical(name, list(choices)) for name, choices in self.choices().items()}
        return self.decode(params)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "cells": list(self.cells)}
