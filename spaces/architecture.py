"""`Architecture`: an immutable, validated subgraph of a :class:`RoutingSpace`, with a canonical JSON form."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Mapping, Sequence

from .errors import RoutespaceError
from .space import CELL_TYPES, Edge, Node, RoutingSpace

FORMAT_NAME = "routespace.architecture"
FORMAT_VERSION = 1
MAX_SPEC_BYTES = 1_000_000


def _node_str(node: Node) -> str:
    return f"node (layer {node[0]}, scale {node[1]})"


def _edge_str(edge: Edge) -> str:
    layer, src, dst = edge
    return f"edge (layer {layer - 1}, scale {src}) -> (layer {layer}, scale {dst})"


@dataclass(frozen=True)
class Architecture:
    """A set of active edges of a space (their nodes are active) plus optional per-node cell types.

    Node (0, 0) is the initial node right after the stem (stride 4); like every node it has a cell.
    A node whose cell is ``identity`` runs nothing and forwards its summed input: every route of the
    dynamic net, closed (pass-through) nodes included, is an Architecture.

    Valid means: every edge is an edge of the space, every active node is reached from the stem
    (node (0, 0)) and reaches the decoder (the last layer). Edges are (target layer, source scale,
    target scale). ``cells`` maps nodes to a cell type where it differs from the space's default.
    """

    space: RoutingSpace
    edges: frozenset[Edge]
    cells: tuple[tuple[Node, str], ...] = ()
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        edges = frozenset(tuple(int(v) for v in e) for e in self.edges)
        object.__setattr__(self, "edges", edges)
        cells = dict(self.cells) if not isinstance(self.cells, Mapping) else dict(self.cells)
        canon = tuple(sorted(((int(l), int(s)), c) for (l, s), c in cells.items() if c != self.space.cell))
        object.__setattr__(self, "cells", canon)
        _validate(self)

    # --- structure -------------------------------------------------------------------------------
    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        """Active nodes, sorted by (layer, scale); the stem (0, 0) included."""
        out = {(0, 0)}
        for layer, src, dst in self.edges:
            out.add((layer - 1, src))
            out.add((layer, dst))
        return tuple(sorted(out))

    @cached_property
    def sorted_edges(self) -> tuple[Edge, ...]:
        return tuple(sorted(self.edges))

    def cell_of(self, node: Node) -> str:
        return dict(self.cells).get(node, self.space.cell)

    def in_edges(self, node: Node) -> list[Edge]:
        return [e for e in self.space.in_edges(node) if e in self.edges]

    def out_edges(self, node: Node) -> list[Edge]:
        return [e for e in self.space.out_edges(node) if e in self.edges]

    def output_scales(self) -> list[int]:
        """Scales of the active last-layer nodes (the decoder's inputs)."""
        return [s for (l, s) in self.nodes if l == self.space.layers]

    @cached_property
    def graph(self):
        """The architecture as a ``networkx.DiGraph`` (a subgraph of ``space.graph``, plus cell types)."""
        g = self.space.graph.subgraph(self.nodes).edge_subgraph(
            [((l - 1, s), (l, d)) for (l, s, d) in self.edges]
        ).copy()
        g.add_node((0, 0), **self.space.graph.nodes[(0, 0)])
        for node in g.nodes:
            g.nodes[node]["cell"] = self.cell_of(node)
        g.graph["name"] = self.name
        return g

    # --- constructors ----------------------------------------------------------------------------
    @classmethod
    def from_path(cls, space: RoutingSpace, scales: Sequence[int], name: str = "") -> "Architecture":
        """A single path: ``scales[l-1]`` is the scale at layer l, for l = 1..L (moves of -1/0/+1)."""
        if len(scales) != space.layers:
            raise RoutespaceError(f"a path needs one scale per layer ({space.layers}), got {len(scales)}")
        prev, edges = 0, []
        for layer, s in enumerate(scales, start=1):
            edges.append((layer, prev, int(s)))
            prev = int(s)
        return cls(space, frozenset(edges), name=name)

    @classmethod
    def all_open(cls, space: RoutingSpace) -> "Architecture":
        return cls(space, frozenset(space.edges()), name="all-open")

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "space": self.space.to_dict(),
            "edges": [[[l - 1, s], [l, d]] for (l, s, d) in self.sorted_edges],
            "cells": {f"{l},{s}": c for (l, s), c in self.cells},
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys and edges, so equal architectures give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: object, space: RoutingSpace | None = None) -> "Architecture":
        if not isinstance(data, dict):
            raise RoutespaceError(f"a spec must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != FORMAT_NAME:
            raise RoutespaceError(f"not a routespace spec: field 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
        version = data.get("version")
        if type(version) is not int or version != FORMAT_VERSION:  # true and 1.0 equal 1 but are not versions
            raise RoutespaceError(
                f"unknown spec format version {version!r}: this routespace reads version {FORMAT_VERSION}"
            )
        allowed = {"format", "version", "name", "space", "edges", "cells"}
        unknown = set(data) - allowed
        if unknown:
            raise RoutespaceError(f"unknown spec field(s) {_few(unknown)}: allowed are {sorted(allowed)}")
        if space is None:
            if "space" not in data:
                raise RoutespaceError("spec has no 'space' field: add one or pass the space (e.g. --preset)")
            space = RoutingSpace.from_dict(data["space"])
        name = data.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            raise RoutespaceError("spec field 'name' must be a string of at most 200 characters")
        edges = _parse_edges(data.get("edges"), space)
        cells = _parse_cells(data.get("cells", {}))
        return cls(space, frozenset(edges), tuple(cells.items()), name=name)

    @classmethod
    def from_json(cls, text: str | bytes, space: RoutingSpace | None = None) -> "Architecture":
        if len(text) > MAX_SPEC_BYTES:
            raise RoutespaceError(f"spec is larger than {MAX_SPEC_BYTES} bytes: not a routespace spec")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # ValueError: bad JSON or encoding, integers over 4300 digits
            raise RoutespaceError(f"spec is not valid JSON: {str(exc)[:200]}") from None
        return cls.from_dict(data, space)

    def __repr__(self) -> str:
        label = f"'{self.name}', " if self.name else ""
        return f"Architecture({label}{len(self.nodes)} nodes, {len(self.edges)} edges, space '{self.space.name}')"


def _few(names: Iterable[object], limit: int = 5) -> str:
    """Up to ``limit`` names, sorted and quoted (a hostile spec may bring thousands)."""
    names = sorted(str(n)[:40] for n in names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}" + (f" and {len(names) - limit} more]" if len(names) > limit else "]")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_edges(raw: object, space: RoutingSpace) -> list[Edge]:
    if not isinstance(raw, list) or not raw:
        raise RoutespaceError("spec field 'edges' must be a non-empty list of [[layer, scale], [layer, scale]] pairs")
    if len(raw) > 4 * 3 * space.layers:
        raise RoutespaceError(f"spec has {len(raw)} edges, more than the space has")
    edges = []
    for item in raw:
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(p, list) and len(p) == 2 and all(_is_int(v) for v in p) for p in item)
        )
        if not ok:
            raise RoutespaceError(f"bad edge {json.dumps(item)[:80]}: write edges as [[layer, scale], [layer, scale]]")
        (l0, s0), (l1, s1) = item
        if l1 != l0 + 1:
            raise RoutespaceError(
                f"edge (layer {l0}, scale {s0}) -> (layer {l1}, scale {s1}) skips a layer: "
                "edges connect layer l-1 to layer l"
            )
        edge = (l1, s0, s1)
        if abs(s1 - s0) > 1:
            raise RoutespaceError(
                f"{_edge_str(edge)} jumps {abs(s1 - s0)} scales: edges move at most one scale (up, keep or down)"
            )
        if not space.has_edge(edge):
            raise RoutespaceError(
                f"{_edge_str(edge)} is not in the space ({space.layers} layers; layer l reaches scales 0..min(l, 3))"
            )
        edges.append(edge)
    return edges


def _parse_cells(raw: object) -> dict[Node, str]:
    if not isinstance(raw, dict):
        raise RoutespaceError("spec field 'cells' must be an object mapping 'layer,scale' to a cell type")
    out = {}
    for key, cell in raw.items():
        parts = str(key).split(",")
        try:  # isdigit() admits characters that int() rejects, such as superscripts
            ok = len(parts) == 2 and all(p.strip().lstrip("-").isdigit() and len(p.strip()) < 6 for p in parts)
            node = (int(parts[0]), int(parts[1])) if ok else None
        except ValueError:
            node = None
        if node is None:
            raise RoutespaceError(f"bad cells key {str(key)[:40]!r}: write 'layer,scale', e.g. '3,1'")
        if not isinstance(cell, str):  # the parsed node, not the raw key: a key may hold a line break
            raise RoutespaceError(f"cell type for {_node_str(node)} must be a string, one of {', '.join(CELL_TYPES)}")
        out[node] = cell
    return out


def _validate(arch: Architecture) -> None:
    space = arch.space
    if not arch.edges:
        raise RoutespaceError("an architecture needs at least one edge (a path from the stem to the last layer)")
    for edge in arch.sorted_edges:
        layer, src, dst = edge
        if abs(src - dst) > 1:
            raise RoutespaceError(f"{_edge_str(edge)} jumps {abs(src - dst)} scales: edges move at most one scale")
        if not space.has_edge(edge):
            raise RoutespaceError(
                f"{_edge_str(edge)} is not in the space ({space.layers} layers; layer l reaches scales 0..min(l, 3))"
            )
    active = set(arch.nodes)
    has_in = {(l, d) for (l, s, d) in arch.edges}
    has_out = {(l - 1, s) for (l, s, d) in arch.edges}
    for node in sorted(active):
        layer, _ = node
        if layer > 0 and node not in has_in:
            raise RoutespaceError(
                f"{_node_str(node)} is not reachable from the stem: it has no incoming edge "
                f"(add one from layer {layer - 1} or remove its outgoing edges)"
            )
        if layer < space.layers and node not in has_out:
            raise RoutespaceError(
                f"{_node_str(node)} does not reach the decoder: it has no outgoing edge "
                f"(add one to layer {layer + 1} or remove its incoming edges)"
            )
    if (0, 0) not in has_out:
        raise RoutespaceError("no edge leaves the stem (layer 0, scale 0): the architecture is not connected to the input")
    for node, cell in arch.cells:
        if node not in active:
            raise RoutespaceError(f"cell type given for {_node_str(node)}, which is not an active node")
        if cell not in CELL_TYPES:
            raise RoutespaceError(f"unknown cell type {cell!r} for {_node_str(node)}: choose one of {', '.join(CELL_TYPES)}")


def load_architecture(path: str, space: RoutingSpace | None = None) -> Architecture:
    """Read a spec file; every problem is a :class:`RoutespaceError` naming the file."""
    import os

    try:
        size = os.path.getsize(path)
        if size > MAX_SPEC_BYTES:
            raise RoutespaceError(f"{path}: {size} bytes is too large for a spec (limit {MAX_SPEC_BYTES})")
        with open(path, "rb") as fh:
            text = fh.read(MAX_SPEC_BYTES + 1)  # bounded: getsize is 0 for endless devices and pipes
        if len(text) > MAX_SPEC_BYTES:
            raise RoutespaceError(f"{path}: more than {MAX_SPEC_BYTES} bytes is too large for a spec")
    except FileNotFoundError:
        raise RoutespaceError(f"spec file {path} does not exist") from None
    except IsADirectoryError:
        raise RoutespaceError(f"{path} is a folder, not a spec file") from None
    except PermissionError:
        raise RoutespaceError(f"cannot read spec file {path}: permission denied") from None
    except OSError as exc:  # e.g. a file name that is too long, an I/O error
        raise RoutespaceError(f"cannot read spec file {str(path)[:200]}: {exc.strerror or exc}") from None
    try:
        return Architecture.from_json(text, space)
    except RoutespaceError as exc:
        raise RoutespaceError(f"{path}: {exc}") from None
