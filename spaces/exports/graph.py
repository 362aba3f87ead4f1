"""Architecture <-> networkx graph: node-link JSON and GraphML, both with GraphML-safe attributes.

Nodes are named ``"layer,scale"`` (strings, since GraphML and JSON have no tuples); every attribute is
a str, int or bool. Graph attributes carry the format name/version, the architecture name and the
space's fields (``space_*``; the input size as ``"HxW"``), so a file alone gives the Architecture back.
"""
from __future__ import annotations

import json
from typing import Any

from ..architecture import Architecture
from ..errors import RoutespaceError
from ..space import STRIDES, RoutingSpace, edge_kind

GRAPH_FORMAT = "routespace.architecture.graph"
GRAPH_VERSION = 1
_SPACE_FIELDS = ("layers", "base_channels", "num_classes", "cell", "scales", "name")


def node_id(node: tuple[int, int]) -> str:
    return f"{node[0]},{node[1]}"


def parse_node_id(text: object) -> tuple[int, int]:
    parts = str(text).split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() and len(p.strip()) < 6 for p in parts):
        raise RoutespaceError(f"bad node id {str(text)[:40]!r} in graph: write nodes as 'layer,scale', e.g. '3,1'")
    return int(parts[0]), int(parts[1])


def architecture_to_graph(arch: Architecture):
    """A ``networkx.DiGraph`` of the architecture with only GraphML-safe (str/int/bool) attributes."""
    import networkx as nx

    space = arch.space
    g = nx.DiGraph()
    g.graph.update(
        format=GRAPH_FORMAT,
        version=GRAPH_VERSION,
        name=arch.name,
        **{f"space_{k}": getattr(space, k) for k in _SPACE_FIELDS},
        space_input_size=f"{space.input_size[0]}x{space.input_size[1]}",
    )
    for layer, scale in arch.nodes:
        g.add_node(
            node_id((layer, scale)),
            layer=layer,
            scale=scale,
            stride=STRIDES[scale],
            channels=space.channels(scale),
            cell=arch.cell_of((layer, scale)),
        )
    for layer, src, dst in arch.sorted_edges:
        g.add_edge(node_id((layer - 1, src)), node_id((layer, dst)), kind=edge_kind(src, dst))
    return g


def _space_from_graph_attrs(attrs: dict) -> RoutingSpace:
    if attrs.get("format") != GRAPH_FORMAT:
        raise RoutespaceError(
            f"not a routespace graph: graph attribute 'format' is {attrs.get('format')!r}, expected {GRAPH_FORMAT!r}"
        )
    if attrs.get("version") != GRAPH_VERSION:
        raise RoutespaceError(f"unknown graph format version {attrs.get('version')!r}: this routespace reads {GRAPH_VERSION}")
    data: dict[str, Any] = {}
    for k in _SPACE_FIELDS:
        if f"space_{k}" not in attrs:
            raise RoutespaceError(f"routespace graph lacks the graph attribute 'space_{k}'")
        data[k] = attrs[f"space_{k}"]
    size = str(attrs.get("space_input_size", "")).lower().split("x")
    if len(size) != 2 or not all(p.isdigit() for p in size):
        raise RoutespaceError(f"graph attribute 'space_input_size' must be 'HxW', got {attrs.get('space_input_size')!r}")
    data["input_size"] = [int(size[0]), int(size[1])]
    return RoutingSpace.from_dict(data)


def graph_to_architecture(g, space: RoutingSpace | None = None) -> Architecture:
    """Read an Architecture back from a graph made by :func:`architecture_to_graph` (any node-link/GraphML
    reader's output). Edges define the architecture; node ``cell`` attributes give per-node cell types."""
    space = space or _space_from_graph_attrs(dict(g.graph))
    edges, cells = [], {}
    for u, v in g.edges:
        (l0, s0), (l1, s1) = parse_node_id(u), parse_node_id(v)
        if l1 != l0 + 1:
            raise RoutespaceError(f"graph edge {u} -> {v} skips a layer: edges connect layer l-1 to layer l")
        edges.append((l1, s0, s1))
    for n, attrs in g.nodes(data=True):
        node = parse_node_id(n)
        cell = attrs.get("cell")
        if node[0] > 0 and cell is not None:
            cells[node] = str(cell)
    name = g.graph.get("name", "")
    return Architecture(space, frozenset(edges), cells=cells, name=str(name) if name is not None else "")


def to_node_link(arch: Architecture) -> dict:
    """networkx node-link data (``edges`` key) of :func:`architecture_to_graph`; JSON-serialisable."""
    import networkx as nx

    return nx.node_link_data(architecture_to_graph(arch), edges="edges")


def from_node_link(data: object, space: RoutingSpace | None = None) -> Architecture:
    import networkx as nx

    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not isinstance(data.get("edges"), list):
        raise RoutespaceError("not node-link data: expected a JSON object with 'nodes' and 'edges' lists")
    if not isinstance(data.get("graph", {}), dict):
        raise RoutespaceError("node-link field 'graph' must be an object")
    try:
        g = nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    except (KeyError, TypeError, ValueError, nx.NetworkXError) as exc:
        raise RoutespaceError(f"malformed node-link data: {exc}") from None
    return graph_to_architecture(g, space)


def node_link_json(arch: Architecture) -> str:
    return json.dumps(to_node_link(arch), indent=1, sort_keys=True) + "\n"


def from_node_link_json(text: str | bytes, space: RoutingSpace | None = None) -> Architecture:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RoutespaceError(f"node-link file is not valid JSON: {exc}") from None
    return from_node_link(data, space)


def read_graphml(path: str, space: RoutingSpace | None = None) -> Architecture:
    import networkx as nx

    try:
        g = nx.read_graphml(path)
    except FileNotFoundError:
        raise RoutespaceError(f"GraphML file {path} does not exist") from None
    except Exception as exc:  # lxml/ElementTree/networkx raise many types for a bad file
        raise RoutespaceError(f"{path} is not a readable GraphML file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return graph_to_architecture(g, space)
